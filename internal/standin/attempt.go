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

// attemptOutcome is how one upstream attempt ended: a final local reply, response
// headers (after the upstream filters) with a body to stream, or a reset.
type attemptOutcome struct {
	local   *localReply
	resp    *headerMap
	body    io.ReadCloser
	reset   resetReason
	started bool
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

// attempt runs one try of the router: pick a host, run a fresh upstream filter chain
// on the shared request headers, send the request, run the chain on the response
// headers in reverse order. The router decides about retries only after that, so a
// header an upstream filter added is visible to retriable-headers.
func (rr *routedRequest) attempt(ctx context.Context) *attemptOutcome {
	p, c := rr.p, rr.cluster
	h := c.pick()
	if h == nil {
		return &attemptOutcome{local: newLocalReply(http.StatusServiceUnavailable, "no healthy upstream", "no_healthy_upstream")}
	}
	c.markTraffic()
	c.activeRequests.Add(1)
	defer c.activeRequests.Add(-1)
	p.stats.attempts.Add(1)

	actx, cancel := context.WithCancelCause(ctx)
	var headersIn atomic.Bool
	if pt := rr.policy.perTryTimeoutOrZero(); pt > 0 {
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

	chain := make([]*extProcFilter, 0, len(rr.filters))
	for _, f := range rr.filters {
		chain = append(chain, &extProcFilter{p: p, cfg: f.extProc, cluster: p.clusters[f.extProc.cluster]})
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
	if out := rr.ctxOutcome(actx, false); out != nil {
		return out
	}

	upReq, err := rr.upstreamRequest(actx, h)
	if err != nil {
		return &attemptOutcome{local: newLocalReply(http.StatusBadRequest, "", "invalid_request_after_filters")}
	}
	resp, err := c.transport.RoundTrip(upReq)
	if err != nil {
		if out := rr.ctxOutcome(actx, true); out != nil {
			return out
		}
		var ce *connectError
		if errors.As(err, &ce) {
			p.logf("attempt %d to %s: connect failure: %v", rr.attempts, h.addr, err)
			return &attemptOutcome{reset: resetConnectFailure}
		}
		p.logf("attempt %d to %s: reset: %v", rr.attempts, h.addr, err)
		return &attemptOutcome{reset: resetRemote, started: true}
	}
	headersIn.Store(true)
	rh := &headerMap{}
	rh.add(":status", strconv.Itoa(resp.StatusCode))
	rh.fromHTTP(resp.Header)
	rh.removeHopByHop()
	respEnd := resp.ContentLength == 0
	for i := len(chain) - 1; i >= 0; i-- {
		if lr := chain[i].onHeaders(actx, phaseResponse, rh, respEnd); lr != nil {
			_ = resp.Body.Close()
			return &attemptOutcome{local: lr}
		}
	}
	if out := rr.ctxOutcome(actx, true); out != nil {
		_ = resp.Body.Close()
		return out
	}
	done = true
	return &attemptOutcome{resp: rh, body: resp.Body, cancel: func() { cancel(nil) }}
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

// upstreamRequest turns the shared header map into the HTTP request for host h.
func (rr *routedRequest) upstreamRequest(ctx context.Context, h *host) (*http.Request, error) {
	method, _ := rr.req.get(":method")
	path, _ := rr.req.get(":path")
	authority, _ := rr.req.get(":authority")
	if rr.rt.autoHostRewrite {
		authority = h.cfg.hostname
	}
	scheme := "http"
	if rr.cluster.cfg.tls != nil {
		scheme = "https"
	}
	u, err := url.Parse(scheme + "://" + h.addr + path)
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
	req, err := http.NewRequestWithContext(context.WithValue(ctx, sniKey{}, hostOnly(authority)), method, u.String(), body)
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
