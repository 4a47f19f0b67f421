package standin

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// downstreamHeaders builds Envoy's request header map for a downstream request:
// pseudo-headers first, then the client's headers without hop-by-hop ones.
func downstreamHeaders(r *http.Request) *headerMap {
	h := &headerMap{}
	h.add(":authority", r.Host)
	h.add(":path", r.URL.RequestURI())
	h.add(":method", r.Method)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	h.add(":scheme", scheme)
	h.fromHTTP(r.Header)
	h.removeHopByHop()
	h.remove("host")
	return h
}

// mutateRequestHeaders applies what the connection manager does before routing
// (ConnectionManagerUtility::mutateRequestHeaders): x-forwarded-proto, and an
// x-request-id generated when absent — or replaced, for an edge request from an
// external client when use_remote_address is set and preserve_external_request_id is
// not. The id is set once, so every attempt of the request carries the same one.
func (p *Proxy) mutateRequestHeaders(r *http.Request, h *headerMap) {
	hcm := p.cfg.hcm
	if !h.has("x-forwarded-proto") {
		scheme, _ := h.get(":scheme")
		h.set("x-forwarded-proto", scheme)
	}
	if !hcm.generateRequestID {
		return
	}
	edge := hcm.useRemoteAddress && !isInternalAddress(r.RemoteAddr)
	if !h.has("x-request-id") || (edge && !hcm.preserveExternalRequestID) {
		h.set("x-request-id", newUUID())
	}
}

// isInternalAddress is Envoy's default internal address test: RFC 1918, loopback,
// unique-local IPv6.
func isInternalAddress(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	return ip.IsLoopback() || ip.IsPrivate()
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// applyRouteToRequest performs the router's request rewrites once, before the first
// attempt: prefix_rewrite (recording x-envoy-original-path), host rewrites, the
// literal request headers of route, virtual host and route configuration, and
// x-envoy-expected-rq-timeout-ms.
func (p *Proxy) applyRouteToRequest(h *headerMap, vh *virtualHost, rt *route) {
	if rt.prefixRewrite != nil && rt.prefix != "" {
		path, _ := h.get(":path")
		if len(path) >= len(rt.prefix) {
			if !p.cfg.hcm.suppressEnvoyHeaders {
				h.set("x-envoy-original-path", path)
			}
			h.set(":path", *rt.prefixRewrite+path[len(rt.prefix):])
		}
	}
	if rt.hostRewrite != "" {
		h.set(":authority", rt.hostRewrite)
	}
	for _, ops := range []headerOps{rt.headers, vh.headers, p.cfg.hcm.routes.headers} {
		for _, k := range ops.reqRemove {
			h.remove(k)
		}
		applyHeaderAdds(ops.reqAdd, h)
	}
	if rt.timeout > 0 && !p.cfg.hcm.suppressEnvoyHeaders {
		h.set("x-envoy-expected-rq-timeout-ms", strconv.FormatInt(rt.timeout.Milliseconds(), 10))
	}
}

// finalizeResponse applies the route's response header additions and removals
// (route, virtual host, route configuration: response_headers_to_remove is how the
// retry marker never reaches the client), and the connection manager's response
// headers.
func (p *Proxy) finalizeResponse(h *headerMap, vh *virtualHost, rt *route, req *headerMap, attempts int) {
	var ops []headerOps
	if rt != nil {
		ops = append(ops, rt.headers)
	}
	if vh != nil {
		ops = append(ops, vh.headers)
	}
	ops = append(ops, p.cfg.hcm.routes.headers)
	for _, o := range ops {
		for _, k := range o.respRemove {
			h.remove(k)
		}
		applyHeaderAdds(o.respAdd, h)
	}
	if vh != nil && vh.includeAttemptCountInResponse && attempts > 0 {
		h.set("x-envoy-attempt-count", strconv.Itoa(attempts))
	}
	if p.cfg.hcm.alwaysSetRequestIDInResponse {
		if id, ok := req.get("x-request-id"); ok {
			h.set("x-request-id", id)
		}
	}
}

func writeHeaders(w http.ResponseWriter, h *headerMap) int {
	status := 200
	if s, ok := h.get(":status"); ok {
		if n, err := strconv.Atoi(s); err == nil {
			status = n
		}
	}
	dst := w.Header()
	for _, e := range h.entries {
		if strings.HasPrefix(e.key, ":") {
			continue
		}
		k := http.CanonicalHeaderKey(e.key)
		dst[k] = append(dst[k], e.value)
	}
	w.WriteHeader(status)
	return status
}
