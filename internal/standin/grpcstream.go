package standin

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// grpcStream is one gRPC stream as Envoy's gRPC client runs it
// (source/common/grpc/async_client_impl.cc over the HTTP async client and its router):
// an HTTP/2 request on the cluster's connection pool whose request body is the
// length-prefixed messages sent so far. With grpc_service.retry_policy the messages are
// buffered (ext_proc opens its stream with setBufferBodyForRetry when a retry policy is
// set, ext_proc.cc Filter::openStream) and a stream that fails before the server's
// response headers is retried on another pick of the cluster's load balancer with the
// route retry semantics of retry_state_impl.cc; once response headers arrived nothing
// is retried. Without a policy a failure ends the stream. Failures end as gRPC
// statuses: a reset, a refused or overflowing pool, or no healthy host is UNAVAILABLE
// (the router's 503 local reply through Grpc::Utility::httpToGrpcStatus).
type grpcStream struct {
	c          *upstreamCluster
	authority  string
	path       string
	metadata   [][2]string
	policy     *retryPolicy // nil: no retries
	newMsg     func() proto.Message
	host       *host     // set: always this host
	pinnedPool *connPool // set: always this pool

	ctx    context.Context
	cancel context.CancelFunc
	recv   chan recvResult // messages, then one error: io.EOF for status OK

	mu         sync.Mutex // protects the fields below
	cond       *sync.Cond
	sent       [][]byte // framed messages, replayed by every attempt
	halfClosed bool
	attempts   int
	gotHeaders bool // the server answered with response headers
}

// answered reports whether the server sent response headers, i.e. a failure is the
// server's answer rather than a network failure.
func (s *grpcStream) answered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gotHeaders
}

type recvResult struct {
	msg proto.Message
	err error
}

// grpcTarget is what a gRPC client needs to open streams.
type grpcTarget struct {
	cluster   *upstreamCluster
	authority string // envoy_grpc.authority, or the cluster name
	metadata  [][2]string
	policy    *retryPolicy
	// host and pool pin the stream to one host and pool (health checks); by default
	// the cluster's load balancer picks and the host's pool carries it.
	host *host
	pool *connPool
}

func startGrpcStream(ctx context.Context, t grpcTarget, method string, newMsg func() proto.Message) *grpcStream {
	authority := t.authority
	if authority == "" {
		authority = t.cluster.cfg.name
	}
	s := &grpcStream{c: t.cluster, authority: authority, path: method, metadata: t.metadata, policy: t.policy, newMsg: newMsg,
		host: t.host, pinnedPool: t.pool, recv: make(chan recvResult, 8)}
	s.cond = sync.NewCond(&s.mu)
	s.ctx, s.cancel = context.WithCancel(ctx)
	go s.run()
	return s
}

// send queues one message; the current attempt (and any retry) sends it.
func (s *grpcStream) send(m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal gRPC message: %w", err)
	}
	frame := make([]byte, 5+len(b))
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(b)))
	copy(frame[5:], b)
	s.mu.Lock()
	s.sent = append(s.sent, frame)
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

// closeSend half-closes the stream.
func (s *grpcStream) closeSend() {
	s.mu.Lock()
	s.halfClosed = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// close resets the stream (ext_proc's closeStream resets, ext_proc.cc).
func (s *grpcStream) close() {
	s.cancel()
	s.mu.Lock()
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (s *grpcStream) deliver(r recvResult) bool {
	select {
	case s.recv <- r:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// attemptFailure is how one attempt ended before it could carry the stream.
type attemptFailure struct {
	reset   resetReason
	started bool
	resp    *headerMap // response headers that ended the stream (trailers-only or non-200)
	status  *status.Status
}

func (s *grpcStream) run() {
	var tried []*host
	retriesLeft := uint32(0)
	var backoff *jitteredBackoff
	hostAttempts := 0
	if s.policy != nil {
		retriesLeft = s.policy.numRetries
		backoff = newJitteredBackoff(s.policy.baseInterval, s.policy.maxInterval, s.c.p.opts.Rand)
		if s.policy.previousHosts {
			hostAttempts = int(s.policy.hostSelectionMaxAttempts)
		}
	}
	holding := false
	defer func() {
		if holding {
			s.c.res.endRetry()
		}
	}()
	for {
		h := s.host
		if h == nil {
			h = s.c.pickAvoiding(tried, hostAttempts)
		}
		if h == nil {
			s.deliver(recvResult{err: status.Error(codes.Unavailable, "no healthy upstream")})
			return
		}
		tried = append(tried, h)
		s.c.markTraffic()
		f := s.attempt(h)
		if f == nil {
			return
		}
		if holding {
			s.c.res.endRetry()
			holding = false
		}
		if s.ctx.Err() != nil {
			return
		}
		decision := noRetry
		if s.policy != nil {
			if f.resp != nil {
				decision = s.policy.wouldRetryFromHeaders(f.resp)
			} else {
				decision = s.policy.wouldRetryFromReset(f.reset, f.started)
			}
		}
		if decision == retryWithBackoff && retriesLeft > 0 {
			retriesLeft--
			if s.c.res.tryStartRetry() {
				holding = true
				s.c.p.stats.grpcRetries.Add(1)
				d := backoff.nextBackoff()
				s.c.p.logf("gRPC stream to cluster %s: retrying on another pick in %s", s.c.cfg.name, d)
				t := time.NewTimer(d)
				select {
				case <-s.ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				continue
			}
			s.c.p.stats.retriesOverflow.Add(1)
		}
		st := f.status
		if st == nil {
			st = status.New(codes.Unavailable, "upstream connect error or disconnect/reset before headers")
		}
		if st.Code() == codes.OK {
			s.deliver(recvResult{err: io.EOF})
			return
		}
		s.deliver(recvResult{err: st.Err()})
		return
	}
}

// attempt runs the stream on h. It returns nil when the stream was carried to its end
// (or the caller went away), else why it failed before the response started.
func (s *grpcStream) attempt(h *host) *attemptFailure {
	s.mu.Lock()
	s.attempts++
	s.mu.Unlock()
	pool := s.pinnedPool
	if pool == nil {
		pool = s.c.pool(h, s.c.sniFor(s.authority))
	}
	ps, err := pool.newStream(s.ctx)
	if err != nil {
		if s.ctx.Err() != nil {
			return nil
		}
		var pf *poolFailure
		if errors.As(err, &pf) {
			return &attemptFailure{reset: pf.reason}
		}
		return &attemptFailure{reset: resetConnectFailure}
	}
	actx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	// Wake a body read waiting for messages when the attempt ends.
	context.AfterFunc(actx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	body := &grpcBody{s: s, ctx: actx}
	scheme := "http"
	if s.c.cfg.tls != nil {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(actx, http.MethodPost, (&url.URL{Scheme: scheme, Host: s.authority, Path: s.path}).String(), body)
	if err != nil {
		ps.release()
		return &attemptFailure{reset: resetRemote, status: status.New(codes.Internal, err.Error())}
	}
	req.Host = s.authority
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	for _, kv := range s.metadata {
		req.Header.Add(kv[0], kv[1])
	}
	resp, err := ps.roundTrip(req)
	if err != nil {
		if s.ctx.Err() != nil {
			return nil
		}
		s.c.p.logf("gRPC stream to %s: %v", h.addr, err)
		return &attemptFailure{reset: classifyStreamError(err), started: true}
	}
	defer func() { _ = resp.Body.Close() }()
	s.mu.Lock()
	s.gotHeaders = true
	s.mu.Unlock()
	rh := &headerMap{}
	rh.add(":status", strconv.Itoa(resp.StatusCode))
	rh.fromHTTP(resp.Header)
	if resp.StatusCode != http.StatusOK {
		return &attemptFailure{resp: rh, status: status.New(httpToGrpcStatus(resp.StatusCode), "HTTP status "+strconv.Itoa(resp.StatusCode))}
	}
	if gs, ok := rh.get("grpc-status"); ok {
		// A trailers-only answer: the stream ends in its headers.
		return &attemptFailure{resp: rh, status: grpcStatusOf(gs, rh)}
	}
	s.readMessages(resp)
	return nil
}

// readMessages delivers the response messages, then the final status from the
// trailers.
func (s *grpcStream) readMessages(resp *http.Response) {
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				gs := resp.Trailer.Get("Grpc-Status")
				if gs == "" {
					s.deliver(recvResult{err: status.Error(codes.Internal, "gRPC stream ended without a status")})
					return
				}
				th := &headerMap{}
				th.fromHTTP(resp.Trailer)
				st := grpcStatusOf(gs, th)
				if st.Code() == codes.OK {
					s.deliver(recvResult{err: io.EOF})
					return
				}
				s.deliver(recvResult{err: st.Err()})
				return
			}
			if s.ctx.Err() == nil {
				s.deliver(recvResult{err: status.Error(codes.Unavailable, "upstream reset: "+err.Error())})
			}
			return
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if hdr[0] != 0 {
			s.deliver(recvResult{err: status.Error(codes.Internal, "compressed gRPC message without grpc-encoding")})
			return
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			if s.ctx.Err() == nil {
				s.deliver(recvResult{err: status.Error(codes.Internal, "truncated gRPC message")})
			}
			return
		}
		m := s.newMsg()
		if err := proto.Unmarshal(buf, m); err != nil {
			s.deliver(recvResult{err: status.Error(codes.Internal, "undecodable gRPC message: "+err.Error())})
			return
		}
		if !s.deliver(recvResult{msg: m}) {
			return
		}
	}
}

// grpcBody is one attempt's request body: the stream's messages from the first, then
// those sent later, until the stream half-closes or the attempt ends.
type grpcBody struct {
	s      *grpcStream
	ctx    context.Context
	idx    int
	rd     *bytes.Reader
	closed bool // protected by s.mu: the transport gave up on the body
}

func (b *grpcBody) Read(p []byte) (int, error) {
	for {
		if b.rd != nil && b.rd.Len() > 0 {
			return b.rd.Read(p)
		}
		s := b.s
		s.mu.Lock()
		for b.idx >= len(s.sent) && !s.halfClosed && b.ctx.Err() == nil && !b.closed {
			s.cond.Wait()
		}
		switch {
		case b.closed:
			s.mu.Unlock()
			return 0, io.ErrClosedPipe
		case b.ctx.Err() != nil:
			s.mu.Unlock()
			return 0, b.ctx.Err()
		case b.idx < len(s.sent):
			b.rd = bytes.NewReader(s.sent[b.idx])
			b.idx++
			s.mu.Unlock()
		default:
			s.mu.Unlock()
			return 0, io.EOF
		}
	}
}

// Close is how net/http aborts the body write when the stream ends (a reset, say):
// it must wake a Read waiting for the next message, or RoundTrip never returns.
func (b *grpcBody) Close() error {
	b.s.mu.Lock()
	b.closed = true
	b.s.cond.Broadcast()
	b.s.mu.Unlock()
	return nil
}

func grpcStatusOf(code string, h *headerMap) *status.Status {
	n, err := strconv.Atoi(strings.TrimSpace(code))
	if err != nil {
		return status.New(codes.Unknown, "bad grpc-status "+code)
	}
	msg, _ := h.get("grpc-message")
	if u, err := url.PathUnescape(msg); err == nil {
		msg = u
	}
	return status.New(codes.Code(n), msg)
}

// httpToGrpcStatus is Grpc::Utility::httpToGrpcStatus (source/common/grpc/status.cc).
func httpToGrpcStatus(code int) codes.Code {
	switch code {
	case 400:
		return codes.Internal
	case 401:
		return codes.Unauthenticated
	case 403:
		return codes.PermissionDenied
	case 404:
		return codes.Unimplemented
	case 429, 502, 503, 504:
		return codes.Unavailable
	}
	return codes.Unknown
}
