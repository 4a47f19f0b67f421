package main

import (
	"context"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/envoy-keypool/envoy-keypool/internal/extprocfixture"
)

// errUnexpectedAnswer is an answer Envoy would not accept at that point of the
// stream (wrong kind, or a message where the stream should end).
var errUnexpectedAnswer = errors.New("unexpected answer")

// loadTarget runs the load against the ext_proc server at addr and returns what the
// workers counted in the measurement window (after the warm-up), with what m
// metered over that window.
func loadTarget(ctx context.Context, o options, addr string, m *meter) (result, error) {
	clients, closeClients, err := dialClients(ctx, o, addr)
	if err != nil {
		return result{}, err
	}
	defer closeClients()
	return loadWindow(ctx, o, clients, m)
}

// dialClients opens --conns connections to addr, ready before any clock starts.
func dialClients(ctx context.Context, o options, addr string) ([]extprocv3.ExternalProcessorClient, func(), error) {
	clients := make([]extprocv3.ExternalProcessorClient, o.conns)
	var conns []*grpc.ClientConn
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for i := range clients {
		// One ClientConn is one HTTP/2 connection; a fresh one per slot, as Envoy's
		// worker threads each hold their own.
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			// Envoy's HTTP/2 windows (256 MiB each, source/common/http/http_option_limits.h
			// DEFAULT_INITIAL_STREAM_WINDOW_SIZE, DEFAULT_INITIAL_CONNECTION_WINDOW_SIZE). Fixed windows also
			// turn off grpc-go's BDP estimation, whose pings Envoy never sends and the
			// server would otherwise answer on every burst.
			grpc.WithInitialWindowSize(envoyWindow), grpc.WithInitialConnWindowSize(envoyWindow))
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		conns = append(conns, conn)
		if err := connect(ctx, conn, o.streamTimeout); err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("connect to %s: %w", addr, err)
		}
		clients[i] = extprocv3.NewExternalProcessorClient(conn)
	}
	return clients, closeAll, nil
}

// envoyWindow is Envoy's default HTTP/2 stream and connection window.
const envoyWindow = 256 << 20

// loadWindow runs the workers over clients for --warmup, then for the measurement
// window of --duration, and returns what they counted in the window.
func loadWindow(ctx context.Context, o options, clients []extprocv3.ExternalProcessorClient, m *meter) (result, error) {
	// Request ids unique across runs against one server, whose state remembers the
	// keys each request id tried.
	nonce := cryptorand.Text()[:12]

	start := time.Now()
	measureFrom := start.Add(o.warmup)
	end := measureFrom.Add(o.duration)
	var p *pacer
	if o.rate > 0 {
		p = startPacer(ctx, o.rate, o.concurrency, end)
	}
	// The meter starts when the window opens, on its own goroutine so that no
	// worker waits for it.
	metered := make(chan error, 1)
	timer := time.AfterFunc(o.warmup, func() { metered <- m.start(ctx) })
	defer timer.Stop()

	var budget *atomic.Int64 // requests left to start in the window; nil: no limit
	if o.requests > 0 {
		budget = new(atomic.Int64)
		budget.Store(o.requests)
	}
	workers := make([]*worker, o.concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{
			o:           o,
			client:      clients[i%len(clients)],
			md:          metadata.Pairs(o.metadataKey, o.pool),
			rng:         rand.New(rand.NewPCG(rand.Uint64(), uint64(i))),
			idBase:      fmt.Sprintf("load-%s-%d-", nonce, i),
			measureFrom: measureFrom,
			pacer:       p,
			budget:      budget,
			stats:       newStats(),
		}
		workers[i] = w
		wg.Go(func() { w.run(ctx, end) })
	}
	wg.Wait()
	if timer.Stop() { // the run ended before its window opened
		return result{}, fmt.Errorf("run ended during the warm-up: %w", context.Cause(ctx))
	}
	if err := <-metered; err != nil {
		return result{}, err
	}
	usage, err := m.stop(ctx)
	if err != nil {
		return result{}, err
	}
	elapsed := time.Since(measureFrom)

	total := newStats()
	for _, w := range workers {
		total.merge(w.stats)
	}
	r := total.result(elapsed)
	r.TargetRate = o.rate
	if p != nil {
		r.Missed = p.missed.Load()
	}
	usage.fill(&r)
	return r, nil
}

// connect opens conn before the clock starts, so that connection setup is not
// measured and an unreachable target is one error rather than a storm of them.
func connect(ctx context.Context, conn *grpc.ClientConn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn.Connect()
	for {
		s := conn.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			return fmt.Errorf("connection %s", s)
		}
		if !conn.WaitForStateChange(ctx, s) {
			return fmt.Errorf("connection still %s: %w", s, ctx.Err())
		}
	}
}

// pacer hands out one token per attempt at a fixed rate (an open loop, as clients
// arrive). A token no worker is free to take within a short queue is missed: the
// server could not keep up, and the achieved rate falls short of the target.
type pacer struct {
	tokens chan struct{} // closed at the end of the run
	done   chan struct{} // closed once no token is handed out any more
	missed atomic.Int64
}

func startPacer(ctx context.Context, rate float64, queue int, end time.Time) *pacer {
	p := &pacer{tokens: make(chan struct{}, queue), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer close(p.tokens)
		start := time.Now()
		var sent int64
		for now := start; now.Before(end) && ctx.Err() == nil; now = time.Now() {
			due := int64(now.Sub(start).Seconds() * rate)
			for ; sent < due; sent++ {
				select {
				case p.tokens <- struct{}{}:
				default:
					p.missed.Add(1)
				}
			}
			time.Sleep(200 * time.Microsecond) // a timer tick; the count above catches up
		}
	}()
	return p
}

// wait takes a token; false once the run is over (no token left to take).
func (p *pacer) wait(ctx context.Context) bool {
	select {
	case _, ok := <-p.tokens:
		return ok
	case <-ctx.Done():
		return false
	}
}

// worker plays one client's requests, one at a time. Only its own goroutine touches
// it until loadTarget merges its stats.
type worker struct {
	o           options
	client      extprocv3.ExternalProcessorClient
	md          metadata.MD
	rng         *rand.Rand
	idBase      string
	n           int
	measureFrom time.Time
	pacer       *pacer        // nil: closed loop
	budget      *atomic.Int64 // requests left to start in the window; nil: no limit
	stats       *stats
}

// run sends requests until end; a request under way at end finishes, so no stream
// is cut short and counted as an error.
func (w *worker) run(ctx context.Context, end time.Time) {
	for ctx.Err() == nil && time.Now().Before(end) {
		if w.pacer != nil && !w.pacer.wait(ctx) {
			return
		}
		if w.budget != nil && !time.Now().Before(w.measureFrom) && w.budget.Add(-1) < 0 {
			return
		}
		w.request(ctx)
	}
}

// request plays the attempts of one client request. Its counts go to the stats when
// it started in the measurement window.
func (w *worker) request(ctx context.Context) {
	w.n++
	id := w.idBase + strconv.Itoa(w.n)
	st := w.stats
	if time.Now().Before(w.measureFrom) {
		st = newStats() // warm-up: counted nowhere
	}
	for n := 1; n <= w.o.maxAttempts; n++ {
		if n > 1 && w.pacer != nil {
			w.pacer.wait(ctx) // a retry is an attempt like any other; after the run, unpaced
		}
		out, err := w.attempt(ctx, st, id, n)
		if err != nil {
			if ctx.Err() == nil { // an interrupted run reports nothing
				st.fail(err)
			}
			return
		}
		switch out {
		case answeredExhausted:
			st.exhausted++
			st.requests++
			return
		case answeredPass:
			st.requests++
			return
		}
		st.retries++
	}
	// Envoy would have forwarded the last failing answer to the client.
	st.retriesUsedUp++
	st.requests++
}

type outcome int

const (
	answeredPass      outcome = iota // the response goes to the client
	answeredRetry                    // the retry marker: Envoy tries again
	answeredExhausted                // an ImmediateResponse to the request headers
)

// attempt plays one Process stream as Envoy's upstream ext_proc filter does.
func (w *worker) attempt(ctx context.Context, st *stats, requestID string, n int) (outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, w.o.streamTimeout)
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, w.md)

	start := time.Now()
	st.streams++
	s, err := w.client.Process(ctx)
	if err != nil {
		return 0, err
	}
	resp, err := st.exchange(s, extprocfixture.RequestHeaders(w.o.names(), requestID, n))
	if err != nil {
		return 0, err
	}
	out := answeredPass
	switch {
	case resp.GetImmediateResponse() != nil:
		out = answeredExhausted
	case resp.GetRequestHeaders() == nil:
		return 0, fmt.Errorf("%w to request headers: %T", errUnexpectedAnswer, resp.GetResponse())
	default:
		code := 200
		if w.rng.Float64() < w.o.failRate {
			code = w.o.failStatus
		}
		resp, err = st.exchange(s, responseHeaders(code))
		if err != nil {
			return 0, err
		}
		rh := resp.GetResponseHeaders()
		if rh == nil {
			return 0, fmt.Errorf("%w to response headers: %T", errUnexpectedAnswer, resp.GetResponse())
		}
		mutation := rh.GetResponse().GetHeaderMutation()
		// The server asked for the error body to classify the failure (Envoy's
		// filter allows the override in the generated configuration): Envoy buffers
		// the body and sends it in one message; the marker is then on that answer.
		if code >= 400 && resp.GetModeOverride().GetResponseBodyMode() == extprocfilterv3.ProcessingMode_BUFFERED {
			resp, err = st.exchange(s, responseBody(code))
			if err != nil {
				return 0, err
			}
			rb := resp.GetResponseBody()
			if rb == nil {
				return 0, fmt.Errorf("%w to the response body: %T", errUnexpectedAnswer, resp.GetResponse())
			}
			mutation = rb.GetResponse().GetHeaderMutation()
		}
		if sets(mutation, w.o.retryMarker) {
			out = answeredRetry
		}
	}
	// Envoy half-closes once it needs nothing more; the server ends the stream.
	if err := s.CloseSend(); err != nil {
		return 0, err
	}
	if extra, err := s.Recv(); !errors.Is(err, io.EOF) {
		if err == nil {
			return 0, fmt.Errorf("%w after the last phase: %T", errUnexpectedAnswer, extra.GetResponse())
		}
		return 0, err
	}
	st.latencies = append(st.latencies, time.Since(start))
	st.attempts++
	return out, nil
}

// exchange sends one message and reads its answer, recording how long the answer
// took: what Envoy holds the request or the response for.
func (s *stats) exchange(c extprocv3.ExternalProcessor_ProcessClient, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	start := time.Now()
	if err := c.Send(req); err != nil {
		return nil, err
	}
	resp, err := c.Recv()
	if err == nil {
		s.messages = append(s.messages, time.Since(start))
	}
	return resp, err
}

func sets(m *extprocv3.HeaderMutation, name string) bool {
	for _, h := range m.GetSetHeaders() {
		if h.GetHeader().GetKey() == name {
			return true
		}
	}
	return false
}

// names are the header names of the shared request fixture, as the flags set them.
func (o options) names() extprocfixture.Names {
	return extprocfixture.Names{RequestID: o.requestID, AttemptCount: o.attemptCount}
}
