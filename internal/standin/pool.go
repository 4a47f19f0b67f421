package standin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// thresholds are a cluster's circuit-breaker limits at default priority
// (CircuitBreakers.Thresholds): max_connections, max_pending_requests and max_requests
// default to 1024, max_retries to 3 (source/common/upstream/upstream_impl.cc
// ClusterInfoImpl::ResourceManagers::load).
type thresholds struct {
	maxConnections uint64
	maxPending     uint64
	maxRequests    uint64
	maxRetries     uint64
	budget         *retryBudget
}

var defaultThresholds = thresholds{maxConnections: 1024, maxPending: 1024, maxRequests: 1024, maxRetries: defaultMaxRetries}

// resources is a cluster's resource manager (ResourceManagerImpl,
// source/common/upstream/resource_manager_impl.h): the counts its circuit breakers
// compare with the thresholds, shared by every host of the cluster.
type resources struct {
	limits thresholds

	mu          sync.Mutex // protects the counts below
	connections int
	pending     int
	requests    int
	retries     int
}

// tryStartRetry is retries().canCreate() + inc(): at most max_retries retries in
// flight, or with a retry_budget max(min_retry_concurrency, budget_percent of the
// active and pending requests) (RetryBudgetImpl::max).
func (r *resources) tryStartRetry() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	limit := int(r.limits.maxRetries)
	if b := r.limits.budget; b != nil {
		limit = int(b.percent / 100 * float64(r.requests+r.pending))
		if limit < int(b.minConcurrency) {
			limit = int(b.minConcurrency)
		}
	}
	if r.retries >= limit {
		return false
	}
	r.retries++
	return true
}

func (r *resources) endRetry() {
	r.mu.Lock()
	r.retries--
	r.mu.Unlock()
}

// poolFailure is why a pool could not give a stream (ConnectionPool::PoolFailureReason).
type poolFailure struct {
	reason resetReason // resetOverflow or resetConnectFailure
	err    error
}

func (e *poolFailure) Error() string {
	if e.reason == resetOverflow {
		return "upstream overflow"
	}
	return "upstream connect error: " + e.err.Error()
}

func (e *poolFailure) Unwrap() error { return e.err }

// connPool is one host's connection pool for one protocol and SNI, the shape of
// ConnPoolImplBase (source/common/conn_pool/conn_pool_base.cc):
//   - a stream goes to a ready connection when one has room; else it waits as a
//     pending stream (past max_pending_requests: overflow), and a new connection is
//     opened when the pending streams outnumber the connecting capacity and
//     max_connections allows it (a pool with no connection at all may always open
//     one, so its streams can be served);
//   - a stream attached to a connection counts against max_requests (past it:
//     overflow) until its response ends;
//   - a failed connect fails every pending stream of the pool (purgePendingStreams);
//   - a connection idle for common_http_protocol_options.idle_timeout is closed, and
//     one that served max_requests_per_connection streams is drained.
type connPool struct {
	c     *upstreamCluster
	res   *resources // the cluster's circuit breakers (unlimited for health checks)
	h     *host
	sni   string
	http2 bool // a connection carries many streams (HTTP/2), else one (HTTP/1.1)

	mu         sync.Mutex // protects the fields below
	conns      []*pooledConn
	connecting int
	waiters    []*poolWaiter
}

type pooledConn struct {
	cc       *http.ClientConn
	h2       bool   // negotiated HTTP/2: a reset cancels one stream, not the connection
	served   uint32 // streams attached so far
	draining bool   // no new streams: max_requests_per_connection reached
	idle     *time.Timer
}

type poolWaiter struct {
	ch   chan poolResult // buffered, 1
	done bool            // answered or cancelled; protected by connPool.mu
}

type poolResult struct {
	pc  *pooledConn
	err error
}

// poolStream is a stream the pool attached to a connection: call roundTrip once, then
// end it (or let the response body's EOF or Close end it).
type poolStream struct {
	p    *connPool
	pc   *pooledConn
	once sync.Once
}

// newStream returns a stream on a connection of the pool, waiting for one while ctx
// lasts. A *poolFailure says the pool refused or could not connect.
func (p *connPool) newStream(ctx context.Context) (*poolStream, error) {
	s, w, err := p.request()
	if err != nil || s != nil {
		return s, err
	}
	return p.wait(ctx, w)
}

// request is the synchronous part of ConnPoolImplBase::newStreamImpl: a stream on a
// ready connection, an overflow, or a pending stream to wait for.
func (p *connPool) request() (*poolStream, *poolWaiter, error) {
	res := p.res
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc := p.readyConnLocked(); pc != nil {
		s, err := p.attachLocked(pc)
		return s, nil, err
	}
	res.mu.Lock()
	if uint64(res.pending) >= res.limits.maxPending {
		res.mu.Unlock()
		p.c.p.stats.pendingOverflow.Add(1)
		return nil, nil, &poolFailure{reason: resetOverflow}
	}
	res.pending++
	res.mu.Unlock()
	w := &poolWaiter{ch: make(chan poolResult, 1)}
	p.waiters = append(p.waiters, w)
	p.maybeConnectLocked()
	return nil, w, nil
}

// wait waits for a pending stream's connection while ctx lasts.
func (p *connPool) wait(ctx context.Context, w *poolWaiter) (*poolStream, error) {
	select {
	case r := <-w.ch:
		if r.err != nil {
			return nil, r.err
		}
		return &poolStream{p: p, pc: r.pc}, nil
	case <-ctx.Done():
		p.mu.Lock()
		if !w.done {
			w.done = true
			p.removeWaiterLocked(w)
			p.mu.Unlock()
			return nil, ctx.Err()
		}
		p.mu.Unlock()
		// The pool answered while the caller gave up: give the stream back.
		if r := <-w.ch; r.err == nil {
			(&poolStream{p: p, pc: r.pc}).release()
		}
		return nil, ctx.Err()
	}
}

// readyConnLocked reserves room on a usable connection, or returns nil.
func (p *connPool) readyConnLocked() *pooledConn {
	for _, pc := range p.conns {
		if pc.draining || pc.cc.Err() != nil {
			continue
		}
		if pc.cc.Reserve() == nil {
			return pc
		}
	}
	return nil
}

// attachLocked is ConnPoolImplBase::attachStreamToClient: the max_requests check,
// then the stream counts as a request until it ends. pc is reserved.
func (p *connPool) attachLocked(pc *pooledConn) (*poolStream, error) {
	res := p.res
	res.mu.Lock()
	if uint64(res.requests) >= res.limits.maxRequests {
		res.mu.Unlock()
		pc.cc.Release()
		p.c.p.stats.pendingOverflow.Add(1)
		return nil, &poolFailure{reason: resetOverflow}
	}
	res.requests++
	res.mu.Unlock()
	pc.served++
	if pc.idle != nil {
		pc.idle.Stop()
		pc.idle = nil
	}
	if m := p.c.cfg.maxRequestsPerConnection; m > 0 && pc.served >= m {
		pc.draining = true
	}
	return &poolStream{p: p, pc: pc}, nil
}

func (p *connPool) removeWaiterLocked(w *poolWaiter) {
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			break
		}
	}
	res := p.res
	res.mu.Lock()
	res.pending--
	res.mu.Unlock()
}

// maybeConnectLocked opens connections while the pending streams outnumber what the
// connecting ones will carry (ConnPoolImplBase::tryCreateNewConnections).
func (p *connPool) maybeConnectLocked() {
	perConn := 1
	if p.http2 {
		perConn = 1 << 30
	}
	for len(p.waiters) > p.connecting*perConn {
		res := p.res
		res.mu.Lock()
		allowed := uint64(res.connections) < res.limits.maxConnections || (len(p.conns) == 0 && p.connecting == 0)
		if !allowed {
			res.mu.Unlock()
			p.c.p.stats.connectionOverflow.Add(1)
			return
		}
		res.connections++
		res.mu.Unlock()
		p.connecting++
		go p.connect()
	}
}

func (p *connPool) connect() {
	cc, h2, err := p.c.dial(p.h, p.sni)
	p.mu.Lock()
	p.connecting--
	if err != nil {
		p.res.mu.Lock()
		p.res.connections--
		p.res.mu.Unlock()
		// A failed connect fails every pending stream of the pool.
		waiters := p.waiters
		p.waiters = nil
		for _, w := range waiters {
			w.done = true
			p.res.mu.Lock()
			p.res.pending--
			p.res.mu.Unlock()
			w.ch <- poolResult{err: &poolFailure{reason: resetConnectFailure, err: err}}
		}
		p.mu.Unlock()
		return
	}
	pc := &pooledConn{cc: cc, h2: h2}
	p.conns = append(p.conns, pc)
	p.mu.Unlock()
	// net/http may run the hook synchronously from Reserve, Release, Close, RoundTrip
	// or Body.Close, some of which the pool calls while holding its lock: run it apart.
	cc.SetStateHook(func(*http.ClientConn) { go p.onConnState(pc) })
	p.dispatch()
}

// onConnState runs when a connection's capacity or health changed.
func (p *connPool) onConnState(pc *pooledConn) {
	if pc.cc.Err() != nil {
		p.mu.Lock()
		for i, x := range p.conns {
			if x == pc {
				p.conns = append(p.conns[:i], p.conns[i+1:]...)
				p.res.mu.Lock()
				p.res.connections--
				p.res.mu.Unlock()
				if pc.idle != nil {
					pc.idle.Stop()
				}
				break
			}
		}
		p.maybeConnectLocked()
		p.mu.Unlock()
		return
	}
	p.dispatch()
}

// dispatch hands ready connections to pending streams, closes drained connections
// and arms idle timers.
func (p *connPool) dispatch() {
	var closeNow []*http.ClientConn
	p.mu.Lock()
	for len(p.waiters) > 0 {
		pc := p.readyConnLocked()
		if pc == nil {
			break
		}
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.res.mu.Lock()
		p.res.pending--
		p.res.mu.Unlock()
		w.done = true
		s, err := p.attachLocked(pc)
		if err != nil {
			w.ch <- poolResult{err: err}
			continue
		}
		w.ch <- poolResult{pc: s.pc}
	}
	for _, pc := range p.conns {
		if pc.cc.InFlight() != 0 || pc.cc.Err() != nil {
			continue
		}
		if pc.draining {
			closeNow = append(closeNow, pc.cc)
			continue
		}
		if d := p.c.cfg.idleTimeout; d > 0 && pc.idle == nil {
			pc.idle = time.AfterFunc(d, func() { p.closeIfIdle(pc) })
		}
	}
	p.maybeConnectLocked()
	p.mu.Unlock()
	for _, cc := range closeNow {
		_ = cc.Close()
	}
}

func (p *connPool) closeIfIdle(pc *pooledConn) {
	p.mu.Lock()
	idle := pc.cc.InFlight() == 0
	pc.idle = nil
	p.mu.Unlock()
	if idle {
		p.c.p.logf("cluster %s: closing a connection to %s idle for %s", p.c.cfg.name, p.h.addr, p.c.cfg.idleTimeout)
		_ = pc.cc.Close()
	}
}

func (p *connPool) close() {
	p.mu.Lock()
	conns := append([]*pooledConn(nil), p.conns...)
	p.mu.Unlock()
	for _, pc := range conns {
		_ = pc.cc.Close()
	}
}

// roundTrip sends req on the stream's connection. The stream ends when the response
// body reaches EOF or is closed, or here on error.
func (s *poolStream) roundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.pc.cc.RoundTrip(req)
	if err != nil {
		s.end(false)
		return nil, err
	}
	resp.Body = &streamBody{rc: resp.Body, s: s}
	return resp, nil
}

// end releases the stream's request slot. resetConn closes an HTTP/1.1 connection
// whose response was not read to the end, as Envoy resets the upstream stream of a
// retried response that has a body (router.cc onUpstreamHeaders → resetStream) and an
// HTTP/1.1 stream reset closes its connection.
func (s *poolStream) end(resetConn bool) {
	s.once.Do(func() {
		res := s.p.res
		res.mu.Lock()
		res.requests--
		res.mu.Unlock()
		if resetConn && !s.pc.h2 {
			s.p.c.p.stats.upstreamConnResets.Add(1)
			_ = s.pc.cc.Close()
		}
		s.p.dispatch()
	})
}

// release gives back a stream that was never used for a request.
func (s *poolStream) release() {
	s.pc.cc.Release()
	s.end(false)
}

// streamBody ends its stream at EOF, on a read error or on Close.
type streamBody struct {
	rc io.ReadCloser
	s  *poolStream
}

func (b *streamBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil {
		b.s.end(false)
	}
	return n, err
}

func (b *streamBody) Close() error {
	err := b.rc.Close()
	b.s.end(false)
	return err
}

// classifyStreamError maps a RoundTrip error to Envoy's reset reasons: HTTP/2
// REFUSED_STREAM, or a stream above the last stream id of the server's GOAWAY (which
// nghttp2 and oghttp2 close as refused), is a refused stream; anything else is a
// remote reset or connection termination. net/http exports neither error, so their
// messages are matched.
func classifyStreamError(err error) resetReason {
	var pf *poolFailure
	if errors.As(err, &pf) {
		return pf.reason
	}
	msg := err.Error()
	if strings.Contains(msg, "REFUSED_STREAM") || strings.Contains(msg, "graceful shutdown GOAWAY") {
		return resetRefusedStream
	}
	return resetRemote
}

func (p *connPool) String() string {
	return fmt.Sprintf("pool(%s %s)", p.c.cfg.name, p.h.addr)
}
