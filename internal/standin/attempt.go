package standin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"
)

var errPoolFailed = errors.New("upstream pool failure")

// attemptOutcome is how one upstream attempt ended: a final local reply, response
// headers (after the upstream filters) with a body to stream, or a reset.
type attemptOutcome struct {
	local   *localReply
	resp    *headerMap
	body    io.ReadCloser
	hasBody bool // the response did not end with its headers
	stream  *poolStream
	reset   resetReason
	started bool // request headers reached the codec (first_upstream_tx_byte_sent)
	gone    bool // the downstream client went away: nothing left to answer
	cancel  context.CancelFunc
}

func (o *attemptOutcome) discard() {
	if o.body != nil {
		_ = o.body.Close()
		o.body = nil
	}
	if o.cancel != nil {
		o.cancel()
		o.cancel = nil
	}
}

// discardForRetry drops a response the router retries. One with a body has its
// upstream stream reset (router.cc onUpstreamHeaders: `if (!end_stream ||
// !upstream_request.encodeComplete()) upstream_request.resetStream()`), and an
// HTTP/1.1 stream reset closes its connection; one that ended with its headers leaves
// the connection to the pool.
func (o *attemptOutcome) discardForRetry() {
	if o.hasBody && o.stream != nil {
		o.stream.end(true)
	}
	o.discard()
}

// attempt runs one try of the router, in UpstreamRequest's order
// (source/common/router/upstream_request.cc acceptHeadersFromRouter): pick a host, ask
// its connection pool for a stream (an overflow fails at once; a connection may be
// opened meanwhile), run a fresh upstream filter chain on the shared request headers,
// then hand them to the codec, which reads the map only now (upstream_codec_filter.cc
// decodeHeaders), and run the chain on the response headers in reverse order. The
// router decides about retries only after that, so a header an upstream filter added
// is visible to retriable-headers.
func (rr *routedRequest) attempt(ctx context.Context) *attemptOutcome {
	p, c := rr.p, rr.cluster
	h := c.pick()
	if h == nil {
		return &attemptOutcome{local: newLocalReply(http.StatusServiceUnavailable, "no healthy upstream", "no_healthy_upstream")}
	}
	c.markTraffic()
	p.stats.attempts.Add(1)

	actx, cancel := context.WithCancelCause(ctx)
	var headersIn atomic.Bool
	if pt := rr.timeouts.perTry; pt > 0 {
		// The per-try timeout covers the attempt until its response headers arrive.
		t := time.AfterFunc(pt, func() {
			if !headersIn.Load() {
				cancel(errPerTryTimeout)
			}
		})
		defer t.Stop()
	}
	done := false
	defer func() {
		if !done {
			cancel(nil)
		}
	}()

	authority, _ := rr.req.get(":authority")
	pool := c.pool(h, c.sniFor(authority))
	ps, waiter, err := pool.request()
	if err != nil {
		p.logf("attempt %d to cluster %s: %v", rr.attempts, c.cfg.name, err)
		return &attemptOutcome{reset: resetOverflow}
	}
	type streamResult struct {
		s   *poolStream
		err error
	}
	streamCh := make(chan streamResult, 1)
	if waiter == nil {
		streamCh <- streamResult{s: ps}
	} else {
		go func() {
			s, err := pool.wait(actx, waiter)
			if err != nil && actx.Err() == nil {
				// A failed connect resets the upstream request at once, whatever
				// the upstream filters are doing.
				cancel(errPoolFailed)
			}
			streamCh <- streamResult{s: s, err: err}
		}()
	}
	streamTaken := false
	defer func() {
		if !streamTaken {
			go func() {
				if r := <-streamCh; r.s != nil {
					r.s.release()
				}
			}()
		}
	}()
	poolFailed := func(err error) *attemptOutcome {
		var pf *poolFailure
		if errors.As(err, &pf) {
			p.logf("attempt %d to %s: %v", rr.attempts, h.addr, err)
			return &attemptOutcome{reset: pf.reason}
		}
		return nil
	}

	chain := make([]*extProcFilter, 0, len(rr.filters))
	for _, f := range rr.filters {
		chain = append(chain, newExtProcFilter(p, f.extProc, rr.metadata, rr.start))
	}
	defer func() {
		for _, f := range chain {
			f.close()
		}
	}()
	endOfStream := !rr.hasBody && rr.bodyStream == nil
	for _, f := range chain {
		if lr := f.onHeaders(actx, phaseRequest, rr.req, endOfStream); lr != nil {
			return &attemptOutcome{local: lr}
		}
	}
	if errors.Is(context.Cause(actx), errPoolFailed) {
		streamTaken = true
		return poolFailed((<-streamCh).err)
	}
	if out := rr.ctxOutcome(actx, false); out != nil {
		return out
	}
	streamTaken = true
	sr := <-streamCh
	if sr.err != nil {
		if out := poolFailed(sr.err); out != nil {
			return out
		}
		if out := rr.ctxOutcome(actx, false); out != nil {
			return out
		}
		return &attemptOutcome{gone: true}
	}

	upReq, err := rr.upstreamRequest(actx, h)
	if err != nil {
		sr.s.release()
		return &attemptOutcome{local: newLocalReply(http.StatusServiceUnavailable, err.Error(), "filter_removed_required_request_headers")}
	}
	resp, err := sr.s.roundTrip(upReq)
	if err != nil {
		if out := rr.ctxOutcome(actx, true); out != nil {
			return out
		}
		reason := classifyStreamError(err)
		p.logf("attempt %d to %s: reset (%d): %v", rr.attempts, h.addr, reason, err)
		return &attemptOutcome{reset: reason, started: true}
	}
	rh := &headerMap{}
	rh.add(":status", strconv.Itoa(resp.StatusCode))
	rh.fromHTTP(resp.Header)
	rh.removeHopByHop()
	respEnd := resp.ContentLength == 0
	var body io.ReadCloser = resp.Body
	var buffered []byte // the response body once a filter asked for it (mode_override BUFFERED)
	isBuffered := false
	for i := len(chain) - 1; i >= 0; i-- {
		f := chain[i]
		if lr := f.onHeaders(actx, phaseResponse, rh, respEnd && !isBuffered); lr != nil {
			sr.s.end(!respEnd)
			_ = resp.Body.Close()
			return &attemptOutcome{local: lr}
		}
		if !f.wantsResponseBody(respEnd) {
			continue
		}
		if !isBuffered {
			// The headers stay held while the body is buffered, up to the filter
			// manager's buffer limit; past it the upstream filter manager answers 500
			// (ActiveStreamEncoderFilter::responseDataTooLarge in filter_manager.cc).
			limit := streamBufferLimit(p, rr.vh, rr.rt)
			b, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
			if err != nil {
				if out := rr.ctxOutcome(actx, true); out != nil {
					return out
				}
				return &attemptOutcome{reset: resetRemote, started: true}
			}
			if uint64(len(b)) > limit {
				p.logf("attempt %d: response body over the buffer limit (%d bytes) for ext_proc", rr.attempts, limit)
				sr.s.end(true)
				_ = resp.Body.Close()
				lr := newLocalReply(http.StatusInternalServerError, "Internal Server Error", "response_payload_too_large")
				lr.fromFilter = true
				return &attemptOutcome{local: lr}
			}
			buffered, isBuffered = b, true
		}
		var lr *localReply
		if buffered, lr = f.onResponseBody(actx, rh, buffered); lr != nil {
			_ = resp.Body.Close()
			return &attemptOutcome{local: lr}
		}
	}
	if out := rr.ctxOutcome(actx, true); out != nil {
		_ = resp.Body.Close()
		return out
	}
	// The router sees the headers only now: the per-try timeout ran while a filter held
	// them.
	headersIn.Store(true)
	if isBuffered {
		_ = resp.Body.Close()
		body = io.NopCloser(bytes.NewReader(buffered))
	}
	done = true
	return &attemptOutcome{resp: rh, body: body, hasBody: !respEnd, stream: sr.s, cancel: func() { cancel(nil) }}
}

// ctxOutcome reports the end of an attempt by its context: per-try timeout (a reset
// the retry policy may retry), route timeout (504), or a client gone (nothing to say).
func (rr *routedRequest) ctxOutcome(ctx context.Context, started bool) *attemptOutcome {
	if ctx.Err() == nil {
		return nil
	}
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errPerTryTimeout):
		return &attemptOutcome{reset: resetPerTryTimeout, started: started}
	case errors.Is(cause, errRouteTimeout):
		return &attemptOutcome{local: newLocalReply(http.StatusGatewayTimeout, "upstream request timeout", "upstream_response_timeout")}
	}
	return &attemptOutcome{gone: true}
}

// upstreamRequest turns the shared header map into the HTTP request for host h. It
// reads the map after the upstream filters ran, so a :path an upstream ext_proc set
// is the one that goes upstream (upstream_codec_filter.cc decodeHeaders).
func (rr *routedRequest) upstreamRequest(ctx context.Context, h *host) (*http.Request, error) {
	method, _ := rr.req.get(":method")
	path, _ := rr.req.get(":path")
	authority, _ := rr.req.get(":authority")
	if rr.rt.autoHostRewrite {
		authority = h.cfg.hostname
	}
	if method == "" || path == "" {
		return nil, errors.New("missing required header: :method or :path")
	}
	scheme := "http"
	if rr.cluster.cfg.tls != nil {
		scheme = "https"
	}
	urlHost := authority
	if urlHost == "" {
		urlHost = h.addr // the URL only has to name a host; the pool's connection is fixed
	}
	u, err := url.Parse(scheme + "://" + urlHost + path)
	if err != nil {
		return nil, err
	}
	var body io.Reader
	length := int64(0)
	switch {
	case rr.bodyStream != nil:
		body, length = rr.bodyStream, -1
	case rr.hasBody:
		body, length = bytes.NewReader(rr.body), int64(len(rr.body))
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	req.Host = authority
	req.ContentLength = length
	if body == nil {
		req.Body = http.NoBody
	}
	rr.req.toHTTP(req.Header)
	req.Header.Del("Content-Length")
	return req, nil
}

func hostOnly(authority string) string {
	if i := len(authority) - 1; i > 0 {
		for j := i; j >= 0; j-- {
			if authority[j] == ':' {
				return authority[:j]
			}
			if authority[j] == ']' {
				break
			}
		}
	}
	return authority
}

func (p *retryPolicy) perTryTimeoutOrZero() time.Duration {
	if p == nil {
		return 0
	}
	return p.perTryTimeout
}
