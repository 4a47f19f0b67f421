package standin

import (
	"strconv"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// localReply is a response the stand-in writes itself: Envoy's sendLocalReply from
// the router (timeouts, resets, no healthy upstream) or from an upstream filter
// (ext_proc ImmediateResponse and errors). It is always final: a local reply from an
// upstream filter is never retried (HttpProtocolOptions.http_filters docs).
type localReply struct {
	status  int
	headers *headerMap
	body    string
	details string
}

// newLocalReply mirrors Utility::sendLocalReply: a text/plain body with its length.
func newLocalReply(status int, body, details string) *localReply {
	h := &headerMap{}
	h.set(":status", strconv.Itoa(status))
	if body != "" {
		h.set("content-type", "text/plain")
	}
	return &localReply{status: status, headers: h, body: body, details: details}
}

// defaultImmediateStatus is the status of an ImmediateResponse without one, or with
// one below 200 (ext_proc.cc DefaultImmediateStatus, MutationUtils::isValidHttpStatus).
const defaultImmediateStatus = 200

// immediateReply turns an ext_proc ImmediateResponse into the local reply Envoy sends
// (Filter::sendImmediateResponse in ext_proc.cc): status, body, and header mutations
// checked with the filter's own mutation rules; a failing mutation is logged and the
// reply still goes out.
func (p *Proxy) immediateReply(ir *extprocv3.ImmediateResponse, c *mutationChecker) *localReply {
	status := int(ir.GetStatus().GetCode())
	if status < 200 {
		status = defaultImmediateStatus
	}
	lr := newLocalReply(status, string(ir.GetBody()), ir.GetDetails())
	if ir.GetHeaders() != nil {
		res, err := applyHeaderMutation(ir.GetHeaders(), lr.headers, false, c, p.opts.HonourAppendAction)
		p.stats.rejectedMutations.Add(uint64(res.rejected))
		if err != nil {
			p.logf("immediate response mutations failed: %v", err)
		}
	}
	// The status in the map wins over the proto's, as the mutation may set :status.
	if s, ok := lr.headers.get(":status"); ok {
		if n, err := strconv.Atoi(s); err == nil && n >= 200 {
			lr.status = n
		}
	}
	return lr
}
