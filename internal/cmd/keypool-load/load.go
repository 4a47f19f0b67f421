package main

import (
	"context"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/envoy-keypool/envoy-keypool/internal/extprocfixture"
)

// errUnexpectedAnswer is an answer Envoy would not accept at that point of the
// stream (wrong kind, or a message where the stream should end).
var errUnexpectedAnswer = errors.New("unexpected answer")

// loadTarget runs the load against the ext_proc server at addr and returns what the
// workers counted.
func loadTarget(ctx context.Context, o options, addr string) (result, error) {
	clients := make([]extprocv3.ExternalProcessorClient, o.conns)
	for i := range clients {
		// One ClientConn is one HTTP/2 connection; a fresh one per slot, as Envoy's
		// worker threads each hold their own.
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return result{}, fmt.Errorf("dial %s: %w", addr, err)
		}
		defer conn.Close()
		if err := connect(ctx, conn, o.streamTimeout); err != nil {
			return result{}, fmt.Errorf("connect to %s: %w", addr, err)
		}
		clients[i] = extprocv3.NewExternalProcessorClient(conn)
	}
	// Request ids unique across runs against one server, whose state remembers the
	// keys each request id tried.
	nonce := cryptorand.Text()[:12]

	workers := make([]*worker, o.concurrency)
	start := time.Now()
	end := start.Add(o.duration)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{
			o:      o,
			client: clients[i%len(clients)],
			md:     metadata.Pairs(o.metadataKey, o.pool),
			rng:    rand.New(rand.NewPCG(rand.Uint64(), uint64(i))),
			idBase: fmt.Sprintf("load-%s-%d-", nonce, i),
			stats:  newStats(),
		}
		workers[i] = w
		wg.Go(func() { w.run(ctx, end) })
	}
	wg.Wait()
	elapsed := time.Since(start)

	total := newStats()
	for _, w := range workers {
		total.merge(w.stats)
	}
	return total.result(elapsed), nil
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

// worker plays one client's requests, one at a time. Only its own goroutine touches
// it until loadTarget merges its stats.
type worker struct {
	o      options
	client extprocv3.ExternalProcessorClient
	md     metadata.MD
	rng    *rand.Rand
	idBase string
	n      int
	stats  *stats
}

// run sends requests until end; a request under way at end finishes, so no stream
// is cut short and counted as an error.
func (w *worker) run(ctx context.Context, end time.Time) {
	for ctx.Err() == nil && time.Now().Before(end) {
		w.request(ctx)
	}
}

// request plays the attempts of one client request.
func (w *worker) request(ctx context.Context) {
	w.n++
	id := w.idBase + strconv.Itoa(w.n)
	for n := 1; n <= w.o.maxAttempts; n++ {
		out, err := w.attempt(ctx, id, n)
		if err != nil {
			if ctx.Err() == nil { // an interrupted run reports nothing
				w.stats.fail(err)
			}
			return
		}
		switch out {
		case answeredExhausted:
			w.stats.exhausted++
			w.stats.requests++
			return
		case answeredPass:
			w.stats.requests++
			return
		}
		w.stats.retries++
	}
	// Envoy would have forwarded the last failing answer to the client.
	w.stats.retriesUsedUp++
	w.stats.requests++
}

type outcome int

const (
	answeredPass      outcome = iota // the response goes to the client
	answeredRetry                    // the retry marker: Envoy tries again
	answeredExhausted                // an ImmediateResponse to the request headers
)

// attempt plays one Process stream as Envoy's upstream ext_proc filter does.
func (w *worker) attempt(ctx context.Context, requestID string, n int) (outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, w.o.streamTimeout)
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, w.md)

	start := time.Now()
	w.stats.streams++
	s, err := w.client.Process(ctx)
	if err != nil {
		return 0, err
	}
	resp, err := exchange(s, extprocfixture.RequestHeaders(w.o.names(), requestID, n))
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
		resp, err = exchange(s, extprocfixture.ResponseHeaders(code))
		if err != nil {
			return 0, err
		}
		rh := resp.GetResponseHeaders()
		if rh == nil {
			return 0, fmt.Errorf("%w to response headers: %T", errUnexpectedAnswer, resp.GetResponse())
		}
		if sets(rh.GetResponse().GetHeaderMutation(), w.o.retryMarker) {
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
	w.stats.latencies = append(w.stats.latencies, time.Since(start))
	w.stats.attempts++
	return out, nil
}

func exchange(s extprocv3.ExternalProcessor_ProcessClient, req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	if err := s.Send(req); err != nil {
		return nil, err
	}
	return s.Recv()
}

func sets(m *extprocv3.HeaderMutation, name string) bool {
	for _, h := range m.GetSetHeaders() {
		if h.GetHeader().GetKey() == name {
			return true
		}
	}
	return false
}

// stats is what one worker counted; loadTarget adds them up.
type stats struct {
	requests, streams, attempts int64
	retries, retriesUsedUp      int64
	exhausted                   int64
	errors                      map[string]int64
	latencies                   []time.Duration
}

func newStats() *stats { return &stats{errors: map[string]int64{}} }

func (s *stats) fail(err error) {
	code := status.Code(err).String()
	if errors.Is(err, errUnexpectedAnswer) {
		code = "unexpected_answer"
	}
	s.errors[code]++
}

func (s *stats) merge(o *stats) {
	s.requests += o.requests
	s.streams += o.streams
	s.attempts += o.attempts
	s.retries += o.retries
	s.retriesUsedUp += o.retriesUsedUp
	s.exhausted += o.exhausted
	for k, v := range o.errors {
		s.errors[k] += v
	}
	s.latencies = append(s.latencies, o.latencies...)
}

func (s *stats) result(elapsed time.Duration) result {
	slices.Sort(s.latencies)
	var errs int64
	for _, v := range s.errors {
		errs += v
	}
	sec := elapsed.Seconds()
	return result{
		Elapsed:        sec,
		Requests:       s.requests,
		Streams:        s.streams,
		Attempts:       s.attempts,
		Retries:        s.retries,
		RetriesUsedUp:  s.retriesUsedUp,
		Exhausted:      s.exhausted,
		Errors:         errs,
		ErrorsByCode:   s.errors,
		RequestsPerSec: float64(s.requests) / sec,
		AttemptsPerSec: float64(s.attempts) / sec,
		StreamsPerSec:  float64(s.streams) / sec,
		P50us:          micros(percentile(s.latencies, 0.50)),
		P90us:          micros(percentile(s.latencies, 0.90)),
		P99us:          micros(percentile(s.latencies, 0.99)),
		MaxUs:          micros(percentile(s.latencies, 1)),
	}
}

// percentile is the nearest-rank percentile of sorted samples; 0 without samples.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// names are the header names of the shared request fixture, as the flags set them.
func (o options) names() extprocfixture.Names {
	return extprocfixture.Names{RequestID: o.requestID, AttemptCount: o.attemptCount}
}
