package standin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

var (
	errRouteTimeout  = errors.New("upstream request timeout")
	errPerTryTimeout = errors.New("upstream per-try timeout")
)

// ServeHTTP runs one downstream request through the connection manager and the router.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.stats.requests.Add(1)
	start := p.opts.Now()
	req := downstreamHeaders(r)
	p.mutateRequestHeaders(r, req)

	authority, _ := req.get(":authority")
	path, _ := req.get(":path")
	vh := p.cfg.hcm.routes.matchVirtualHost(authority)
	var rt *route
	if vh != nil {
		rt = vh.matchRoute(path)
	}
	if rt == nil {
		// The connection manager answers 404 when no route matches (route_not_found);
		// without a route no route header operations apply.
		p.writeLocal(w, newLocalReply(http.StatusNotFound, "", "route_not_found"), nil, nil, req, 0, nil)
		return
	}
	c := p.clusters[rt.cluster]

	rr := &routedRequest{p: p, w: w, r: r, req: req, vh: vh, rt: rt, cluster: c, metadata: &dynamicMetadata{}, start: start}
	if lr := rr.runDownstreamFilters(); lr != nil {
		rr.finishLocal(lr)
		return
	}
	// The router, last of the downstream filters.
	policy := p.effectiveRetryPolicy(vh, rt, c)
	rr.timeouts = finalTimeouts(rt.timeout, policy, req)
	rr.policy = retryStateFor(policy, req)
	p.applyRouteToRequest(req, vh, rt, rr.timeouts, rr.metadata)
	chain := p.cfg.hcm.routerFilters
	if c.cfg.hasFilters {
		// The cluster's upstream filters win over the router's (HttpProtocolOptions.http_filters).
		chain = c.cfg.filters
	}
	for _, f := range chain {
		if !rr.enabled(f.name, f.disabled) {
			continue
		}
		rr.filters = append(rr.filters, f)
	}
	rr.serve()
}

// enabled applies a filter's own `disabled` and the route's FilterConfig for its name.
func (rr *routedRequest) enabled(name string, disabledByDefault bool) bool {
	if d, ok := filterDisabled(rr.vh, rr.rt, name); ok {
		return !d
	}
	return !disabledByDefault
}

// runDownstreamFilters runs the connection manager's filters before the router on the
// request. json_to_metadata, when it runs (not disabled for the route, not skipped by
// its match_delegate matcher), buffers the whole body up to the stream's buffer limit
// (past it the filter manager answers 413, ActiveStreamDecoderFilter::
// requestDataTooLarge in filter_manager.cc) and writes the stream's dynamic metadata;
// the body then goes on to the router.
func (rr *routedRequest) runDownstreamFilters() *localReply {
	for _, f := range rr.p.cfg.hcm.downstream {
		if !rr.enabled(f.name, f.disabled) || f.matcher.skips(rr.req) {
			continue
		}
		j := f.json
		ct, _ := rr.req.get("content-type")
		var out structMap
		switch {
		case !j.contentTypeAllowed(ct):
			out = j.mismatchedContentType(rr.metadata)
		case !rr.requestHasBody():
			out = j.allOnMissing(rr.metadata)
		default:
			body, ok, err := rr.bufferWholeBody(streamBufferLimit(rr.p, rr.vh, rr.rt))
			if err != nil {
				panic(http.ErrAbortHandler) // the client went away mid-body
			}
			if !ok {
				lr := newLocalReply(http.StatusRequestEntityTooLarge, "Payload Too Large", "request_payload_too_large")
				lr.fromFilter = true
				return lr
			}
			out = j.processBody(body, rr.metadata)
		}
		for ns, s := range out {
			rr.metadata.merge(ns, s)
		}
	}
	return nil
}

func (rr *routedRequest) requestHasBody() bool {
	return rr.r.Body != nil && rr.r.Body != http.NoBody && rr.r.ContentLength != 0
}

// bufferWholeBody reads the request body, up to limit bytes; ok is false past it.
func (rr *routedRequest) bufferWholeBody(limit uint64) ([]byte, bool, error) {
	if rr.whole {
		return rr.wholeBody, true, nil
	}
	b, err := io.ReadAll(io.LimitReader(rr.r.Body, int64(limit)+1))
	if err != nil {
		return nil, false, err
	}
	if uint64(len(b)) > limit {
		return nil, false, nil
	}
	rr.wholeBody, rr.whole = b, true
	return b, true, nil
}

// effectiveRetryPolicy picks the policy of this request: the cluster's
// HttpProtocolOptions.retry_policy when set (Envoy ≥ 1.37), replacing the route's
// entirely but keeping the route's per_try_timeout, which the cluster's does not carry;
// else the route's, else the virtual host's.
func (p *Proxy) effectiveRetryPolicy(vh *virtualHost, rt *route, c *upstreamCluster) *retryPolicy {
	routePolicy := rt.retry
	if routePolicy == nil {
		routePolicy = vh.retry
	}
	if c.cfg.retry == nil {
		return routePolicy
	}
	cp := *c.cfg.retry
	cp.perTryTimeout = 0
	if routePolicy != nil {
		cp.perTryTimeout = routePolicy.perTryTimeout
	}
	return &cp
}

// bufferLimit is the request body buffered for retries (Filter::
// calculateEffectiveBufferLimit in router.cc): the route's limit (routeBodyLimit), else
// the stream's, which is the listener's per_connection_buffer_limit_bytes (1 MiB by
// default).
func (rr *routedRequest) bufferLimit() uint64 {
	if v := routeBodyLimit(rr.vh, rr.rt); v != nil {
		return *v
	}
	return rr.p.cfg.hcm.bufferLimit
}

// streamBufferLimit is the filter manager's buffer limit, which bounds what filters
// buffer (a buffered response body, json_to_metadata's request body): the listener's
// limit, raised (never lowered) to the route's when the route is picked
// (ActiveStream::refreshBufferLimit in conn_manager_impl.cc).
func streamBufferLimit(p *Proxy, vh *virtualHost, rt *route) uint64 {
	limit := p.cfg.hcm.bufferLimit
	if rt != nil {
		if v := routeBodyLimit(vh, rt); v != nil && *v > limit {
			limit = *v
		}
	}
	return limit
}

// routedRequest is one downstream request after routing.
type routedRequest struct {
	p        *Proxy
	w        http.ResponseWriter
	r        *http.Request
	req      *headerMap // the one header map every attempt shares
	vh       *virtualHost
	rt       *route
	cluster  *upstreamCluster
	policy   *retryPolicy // the retry state; nil: never retried
	timeouts timeouts
	filters  []*filterConfig
	metadata *dynamicMetadata // the stream's dynamic metadata
	start    time.Time        // when the request arrived

	wholeBody  []byte // the whole request body, once a downstream filter buffered it
	whole      bool
	body       []byte    // buffered body, replayed on every attempt
	bodyStream io.Reader // set when the body outgrew the buffer limit: no retry possible
	hasBody    bool
	attempts   int
}

func (rr *routedRequest) readBody() error {
	if !rr.requestHasBody() {
		return nil
	}
	limit := rr.bufferLimit()
	if rr.whole {
		rr.hasBody = len(rr.wholeBody) > 0
		if uint64(len(rr.wholeBody)) > limit {
			rr.bodyStream = bytes.NewReader(rr.wholeBody)
			return nil
		}
		rr.body = rr.wholeBody
		return nil
	}
	buf, err := io.ReadAll(io.LimitReader(rr.r.Body, int64(limit)+1))
	if err != nil {
		return err
	}
	rr.hasBody = len(buf) > 0
	if uint64(len(buf)) > limit {
		// Envoy stops buffering for retry past the limit and abandons retries
		// (Filter::decodeData in router.cc); the body then streams through.
		rr.bodyStream = io.MultiReader(bytes.NewReader(buf), rr.r.Body)
		return nil
	}
	rr.body = buf
	return nil
}

func (rr *routedRequest) serve() {
	p := rr.p
	ctx := rr.r.Context()
	if err := rr.readBody(); err != nil {
		// The client went away or sent a broken body; Envoy resets the stream.
		panic(http.ErrAbortHandler)
	}
	// The route timeout runs from the end of the request to the end of the response,
	// across every retry (RouteAction.timeout; 0 disables it).
	var cancel context.CancelCauseFunc
	ctx, cancel = context.WithCancelCause(ctx)
	defer cancel(nil)
	if rr.timeouts.global > 0 {
		t := time.AfterFunc(rr.timeouts.global, func() { cancel(errRouteTimeout) })
		defer t.Stop()
	}

	policy := rr.policy
	retriesLeft := uint32(0)
	retryOn := false
	var backoff *jitteredBackoff
	if policy != nil {
		retriesLeft = policy.numRetries
		retryOn = policy.retryOn != 0
		backoff = newJitteredBackoff(policy.baseInterval, policy.maxInterval, p.opts.Rand)
	}
	holdingRetry := false
	releaseRetry := func() {
		if holdingRetry {
			rr.cluster.res.endRetry()
			holdingRetry = false
		}
	}
	defer releaseRetry()

	for {
		rr.attempts++
		if rr.vh.includeAttemptCount {
			// Set on the shared map before the attempt, so upstream filters see it.
			rr.req.set("x-envoy-attempt-count", strconv.Itoa(rr.attempts))
		}
		out := rr.attempt(ctx)
		if out.gone {
			return
		}
		if out.local != nil {
			releaseRetry()
			rr.finishLocal(out.local)
			return
		}
		decision := noRetry
		if retryOn {
			if out.resp != nil {
				decision = policy.wouldRetryFromHeaders(out.resp)
			} else {
				decision = policy.wouldRetryFromReset(out.reset, out.started)
			}
		}
		// The previous retry's circuit-breaker slot is released when its outcome is
		// known (RetryStateImpl::shouldRetry → resetRetry).
		releaseRetry()
		retry := false
		if decision == retryWithBackoff {
			switch {
			case rr.bodyStream != nil:
				p.stats.retriesSkippedBuffer.Add(1)
			case retriesLeft == 0:
				p.stats.retryLimitExceeded.Add(1)
			default:
				retriesLeft--
				if rr.cluster.res.tryStartRetry() {
					holdingRetry, retry = true, true
				} else {
					p.stats.retriesOverflow.Add(1)
					p.logf("retry refused by circuit breaker of cluster %s (max_retries %d)", rr.cluster.cfg.name, rr.cluster.cfg.limits.maxRetries)
				}
			}
		}
		if !retry {
			if out.resp != nil {
				rr.forward(ctx, out)
				return
			}
			rr.finishLocal(resetReply(out))
			return
		}
		p.stats.retries.Add(1)
		delay := backoff.nextBackoff()
		if out.resp != nil && len(policy.resetHeaders) > 0 {
			if d, ok := policy.parseResetInterval(out.resp, p.opts.Now()); ok && d > time.Millisecond {
				delay = lowerBoundBackoff(d, p.opts.Rand)
			}
		}
		// A retried response with a body resets its upstream stream, which closes an
		// HTTP/1.1 connection (router.cc onUpstreamHeaders: resetStream unless the
		// response ended with its headers and the request was fully sent).
		out.discardForRetry()
		p.logf("retrying request to cluster %s in %s (attempt %d)", rr.cluster.cfg.name, delay, rr.attempts+1)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			rr.finishLocal(rr.contextReply(ctx))
			return
		case <-t.C:
		}
	}
}

// contextReply is the local reply for a request whose context ended: the route
// timeout (504 "upstream request timeout"), or a client that went away.
func (rr *routedRequest) contextReply(ctx context.Context) *localReply {
	if errors.Is(context.Cause(ctx), errRouteTimeout) {
		return newLocalReply(http.StatusGatewayTimeout, "upstream request timeout", "upstream_response_timeout")
	}
	return nil
}

// resetReply is the local reply for an attempt that ended without response headers
// and is not retried (Filter::onUpstreamReset / onPerTryTimeout in router.cc).
func resetReply(out *attemptOutcome) *localReply {
	if out.reset == resetPerTryTimeout {
		return newLocalReply(http.StatusGatewayTimeout, "upstream request timeout", "upstream_per_try_timeout")
	}
	reason := map[resetReason]string{
		resetConnectFailure: "remote connection failure",
		resetRemote:         "connection termination",
		resetRefusedStream:  "remote refused stream reset",
		resetOverflow:       "overflow",
	}[out.reset]
	lr := newLocalReply(http.StatusServiceUnavailable,
		"upstream connect error or disconnect/reset before headers. reset reason: "+reason,
		"upstream_reset_before_response_started{"+strings.ReplaceAll(reason, " ", "_")+"}")
	lr.overloaded = out.reset == resetOverflow
	return lr
}

func (rr *routedRequest) finishLocal(lr *localReply) {
	if lr == nil {
		// The client is gone; nothing to write.
		return
	}
	rr.p.writeLocal(rr.w, lr, rr.vh, rr.rt, rr.req, rr.attempts, rr.metadata)
}

func (p *Proxy) writeLocal(w http.ResponseWriter, lr *localReply, vh *virtualHost, rt *route, req *headerMap, attempts int, md *dynamicMetadata) {
	p.stats.localReplies.Add(1)
	h := p.localReplyHeaders(lr, vh, rt, attempts, md)
	p.connectionManagerResponseHeaders(h, req)
	p.logf("local reply %s (%s)", h.values(":status"), lr.details)
	writeHeaders(w, h)
	_, _ = io.WriteString(w, lr.body)
}

// forward sends the upstream response to the client, streaming the body and flushing
// every chunk as it arrives (server-sent events must not wait in a buffer).
func (rr *routedRequest) forward(ctx context.Context, out *attemptOutcome) {
	defer out.discard()
	h := out.resp
	rr.p.finalizeRouteResponse(h, rr.vh, rr.rt, rr.metadata)
	routerResponseHeaders(h, rr.vh, rr.attempts)
	rr.p.connectionManagerResponseHeaders(h, rr.req)
	writeHeaders(rr.w, h)
	rc := http.NewResponseController(rr.w)
	_ = rc.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, err := out.body.Read(buf)
		if n > 0 {
			if _, werr := rr.w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			// The response was already started: like Envoy after a timeout or an
			// upstream reset mid-body, reset the downstream stream.
			if ctx.Err() != nil {
				rr.p.logf("route timeout while streaming the response body: resetting the stream")
			}
			panic(http.ErrAbortHandler)
		}
	}
}
