package standin

import (
	"strconv"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// localReply is a response the stand-in writes itself: Envoy's sendLocalReply from
// the router (timeouts, resets, no healthy upstream, overflow) or from an upstream
// filter (ext_proc ImmediateResponse and errors). It is always final: a local reply
// from an upstream filter goes through the downstream sendLocalReply
// (UpstreamFilterManager::sendLocalReply in source/common/router/upstream_request.cc)
// and is never retried.
type localReply struct {
	status  int
	body    string
	details string
	// fromFilter marks an upstream filter's reply: the router's response headers
	// (x-envoy-attempt-count) are not added to it.
	fromFilter bool
	// overloaded adds x-envoy-overloaded: true (a circuit-breaker overflow,
	// Filter::onUpstreamAbort with dropped in router.cc).
	overloaded bool
	// mutate is the reply's own header changes, applied after the route's response
	// header operations (an ImmediateResponse's header mutation).
	mutate func(*headerMap)
}

func newLocalReply(status int, body, details string) *localReply {
	return &localReply{status: status, body: body, details: details}
}

// headers builds the reply's headers the way DownstreamFilterManager::sendLocalReply
// and Utility::prepareLocalReply do (source/common/http/filter_manager.cc,
// source/common/http/utility.cc): :status, then the route's response header
// operations (finalizeHeaders), then the caller's modify_headers (the router's
// x-envoy-attempt-count and x-envoy-overloaded, or the ImmediateResponse's mutation),
// then content-length and a text/plain content-type unless one is set; an empty body
// drops both.
func (p *Proxy) localReplyHeaders(lr *localReply, vh *virtualHost, rt *route, attempts int, md *dynamicMetadata) *headerMap {
	h := &headerMap{}
	h.set(":status", strconv.Itoa(lr.status))
	if rt != nil {
		p.finalizeRouteResponse(h, vh, rt, md)
	}
	if !lr.fromFilter {
		if lr.overloaded && !p.cfg.hcm.suppressEnvoyHeaders {
			h.set("x-envoy-overloaded", "true")
		}
		if rt != nil {
			routerResponseHeaders(h, vh, attempts)
		}
	}
	if lr.mutate != nil {
		lr.mutate(h)
	}
	if lr.body != "" {
		h.set("content-length", strconv.Itoa(len(lr.body)))
		if !h.has("content-type") {
			h.set("content-type", "text/plain")
		}
	} else {
		h.remove("content-length")
		h.remove("content-type")
	}
	return h
}

// defaultImmediateStatus is the status of an ImmediateResponse without one, or with
// one below 200 (ext_proc.cc DefaultImmediateStatus, MutationUtils::isValidHttpStatus).
const defaultImmediateStatus = 200

// immediateReply turns an ext_proc ImmediateResponse into the local reply Envoy sends
// (Filter::sendImmediateResponse in ext_proc.cc): status, body, and header mutations
// checked with the filter's own mutation rules and applied after the route's response
// headers, so response_headers_to_remove cannot strip a header the reply sets; a
// failing mutation is logged and the reply still goes out.
func (p *Proxy) immediateReply(ir *extprocv3.ImmediateResponse, c *mutationChecker) *localReply {
	status := int(ir.GetStatus().GetCode())
	if status < 200 {
		status = defaultImmediateStatus
	}
	lr := newLocalReply(status, string(ir.GetBody()), ir.GetDetails())
	lr.fromFilter = true
	if ir.GetHeaders() != nil {
		mutation := ir.GetHeaders()
		lr.mutate = func(h *headerMap) {
			res, err := applyHeaderMutation(mutation, h, false, c, p.opts.HonourAppendAction)
			p.stats.rejectedMutations.Add(uint64(res.rejected))
			if err != nil {
				p.logf("immediate response mutations failed: %v", err)
			}
		}
	}
	return lr
}

// filterError is a local reply of the ext_proc filter itself (status_on_error,
// message timeout, spurious message).
func filterError(status int, details string) *localReply {
	lr := newLocalReply(status, "", details)
	lr.fromFilter = true
	return lr
}
