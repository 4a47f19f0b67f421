package standin

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// downstreamHeaders builds Envoy's request header map for a downstream request:
// pseudo-headers first, then the client's headers. Connection-specific headers are
// dropped by mutateRequestHeaders, as the connection manager does.
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
	h.remove("host")
	return h
}

// internalAddresses is HttpConnectionManager.internal_address_config. Without it no
// address is internal (DefaultInternalAddressConfig in
// source/common/http/conn_manager_config.h); with it, an IP is internal when it is in
// cidr_ranges or, with no ranges, when it is RFC 1918, 127.0.0.1, ::1 or fd00::/8
// (InternalAddressConfig::isInternalAddress in
// extensions/filters/network/http_connection_manager/config.h and
// Network::Utility::isInternalAddress in source/common/network/utility.cc).
type internalAddresses struct {
	configured bool
	cidrs      []netip.Prefix
}

func buildInternalAddresses(c *hcmv3.HttpConnectionManager_InternalAddressConfig) (internalAddresses, error) {
	if c == nil {
		return internalAddresses{}, nil
	}
	if err := onlyFields("http_connection_manager internal_address_config", c, "unix_sockets", "cidr_ranges"); err != nil {
		return internalAddresses{}, err
	}
	ia := internalAddresses{configured: true}
	for i, r := range c.GetCidrRanges() {
		addr, err := netip.ParseAddr(r.GetAddressPrefix())
		if err != nil {
			return ia, fmt.Errorf("http_connection_manager internal_address_config.cidr_ranges[%d]: %w", i, err)
		}
		bits := int(r.GetPrefixLen().GetValue())
		pfx, err := addr.Prefix(bits)
		if err != nil {
			return ia, fmt.Errorf("http_connection_manager internal_address_config.cidr_ranges[%d]: %w", i, err)
		}
		ia.cidrs = append(ia.cidrs, pfx)
	}
	return ia, nil
}

func (ia internalAddresses) isInternal(ip netip.Addr) bool {
	if !ia.configured || !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	if len(ia.cidrs) > 0 {
		for _, p := range ia.cidrs {
			if p.Contains(ip) {
				return true
			}
		}
		return false
	}
	if ip.Is4() {
		b := ip.As4()
		return b[0] == 10 || (b[0] == 192 && b[1] == 168) || (b[0] == 172 && b[1] >= 16 && b[1] <= 31) || ip == netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return ip.As16()[0] == 0xfd || ip == netip.IPv6Loopback()
}

// edgeHeaders are stripped from edge requests only; externalHeaders from every
// request that is not internal (ConnectionManagerUtility::cleanInternalHeaders in
// source/common/http/conn_manager_utility.cc). So a client can neither steer the
// router (retries, timeouts) nor forge what Envoy records about the request.
var (
	edgeHeaders = []string{
		"x-envoy-decorator-operation", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node",
		"x-envoy-original-path", "x-envoy-original-host",
	}
	externalHeaders = []string{
		"x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on",
		"x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-upstream-alt-stat-name",
		"x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
		"x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
		"x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url", "x-envoy-hedge-on-per-try-timeout",
	}
)

// mutateRequestHeaders is ConnectionManagerUtility::mutateRequestHeaders
// (source/common/http/conn_manager_utility.cc) for the settings the stand-in reads:
//   - connection-specific headers go (connection, upgrade, keep-alive,
//     proxy-connection, transfer-encoding, x-envoy-internal; te keeps only "trailers");
//   - with use_remote_address the client's address (or, with xff_num_trusted_hops, the
//     trusted one from x-forwarded-for) is appended to x-forwarded-for, and
//     x-forwarded-proto is overwritten;
//   - a request is internal only when the client sent no x-forwarded-for and its
//     address is internal per internal_address_config (none is without one): it gets
//     x-envoy-internal: true and keeps its x-envoy-* controls; every other request
//     loses them, and an edge request (use_remote_address, not internal) also gets
//     x-envoy-external-address;
//   - x-request-id is generated when absent, and replaced on an edge request unless
//     preserve_external_request_id (UUIDRequestIDExtension::set in
//     extensions/request_id/uuid/config.cc). It is set once, so every attempt
//     carries the same id.
//
// It reports whether the request is internal.
func (p *Proxy) mutateRequestHeaders(r *http.Request, h *headerMap) (internal bool) {
	hcm := p.cfg.hcm
	h.remove("connection")
	h.remove("upgrade")
	sanitizeTE(h)
	for _, k := range []string{"x-envoy-internal", "keep-alive", "proxy-connection", "transfer-encoding"} {
		h.remove(k)
	}
	remote := addrOf(r.RemoteAddr)
	var final netip.Addr
	allowTrusted := false
	if hcm.useRemoteAddress {
		allowTrusted = !h.has("x-forwarded-for")
		if hcm.xffNumTrustedHops > 0 {
			final = lastXFFAddress(h, int(hcm.xffNumTrustedHops)-1)
		}
		if !final.IsValid() {
			final = remote
		}
		if !hcm.skipXffAppend {
			xff := remote
			if remote.IsLoopback() {
				// appendXff puts the listener's own address for a loopback peer.
				if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
					xff = addrOf(la.String())
				}
			}
			if xff.IsValid() {
				appendXFF(h, xff.String())
			}
		}
		if hcm.xffNumTrustedHops == 0 || !h.has("x-forwarded-proto") {
			scheme, _ := h.get(":scheme")
			h.set("x-forwarded-proto", scheme)
		}
	}
	if !h.has("x-forwarded-proto") {
		scheme, _ := h.get(":scheme")
		h.set("x-forwarded-proto", scheme)
	}
	internal = allowTrusted && hcm.internal.isInternal(final)
	if !final.IsValid() {
		final = remote
	}
	edge := !internal && hcm.useRemoteAddress
	if internal {
		h.set("x-envoy-internal", "true")
	} else {
		if edge {
			for _, k := range edgeHeaders {
				h.remove(k)
			}
		}
		for _, k := range externalHeaders {
			h.remove(k)
		}
	}
	if hcm.via != "" {
		if v, ok := h.get("via"); ok && v != "" {
			h.set("via", v+", "+hcm.via)
		} else {
			h.set("via", hcm.via)
		}
	}
	if edge && final.IsValid() {
		h.set("x-envoy-external-address", final.String())
	}
	if hcm.generateRequestID {
		if id, ok := h.get("x-request-id"); !ok || id == "" || (edge && !hcm.preserveExternalRequestID) {
			h.set("x-request-id", newUUID())
		}
	}
	return internal
}

// sanitizeTE keeps "te: trailers" and drops any other te value
// (ConnectionManagerUtility::sanitizeTEHeader).
func sanitizeTE(h *headerMap) {
	v, ok := h.get("te")
	if !ok {
		return
	}
	for _, part := range strings.Split(v, ",") {
		if strings.TrimSpace(part) == "trailers" {
			h.set("te", "trailers")
			return
		}
	}
	h.remove("te")
}

// appendXFF is Utility::appendXff: ", addr" after an existing value.
func appendXFF(h *headerMap, addr string) {
	if v, ok := h.get("x-forwarded-for"); ok && v != "" {
		h.set("x-forwarded-for", v+","+addr)
		return
	}
	h.set("x-forwarded-for", addr)
}

// lastXFFAddress is Utility::getLastAddressFromXFF: the address numToSkip entries from
// the right of x-forwarded-for, or invalid.
func lastXFFAddress(h *headerMap, numToSkip int) netip.Addr {
	v, ok := h.get("x-forwarded-for")
	if !ok {
		return netip.Addr{}
	}
	parts := strings.Split(v, ",")
	i := len(parts) - 1 - numToSkip
	if i < 0 {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(strings.TrimSpace(parts[i]))
	if err != nil {
		return netip.Addr{}
	}
	return a
}

func addrOf(hostport string) netip.Addr {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
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
// x-envoy-expected-rq-timeout-ms (FilterUtility::setTimeoutHeaders in router.cc: the
// per-try timeout when there is one, else the route timeout).
func (p *Proxy) applyRouteToRequest(h *headerMap, vh *virtualHost, rt *route, t timeouts, md *dynamicMetadata) {
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
	// x-envoy-expected-rq-timeout-ms is set before the route's request header
	// operations, so they may remove it (router.cc decodeHeaders: finalTimeout, then
	// finalizeRequestHeaders).
	expected := t.perTry
	if expected == 0 {
		expected = t.global
	}
	if expected > 0 && !p.cfg.hcm.suppressEnvoyHeaders {
		h.set("x-envoy-expected-rq-timeout-ms", strconv.FormatInt(expected.Milliseconds(), 10))
	}
	for _, ops := range []headerOps{rt.headers, vh.headers, p.cfg.hcm.routes.headers} {
		for _, k := range ops.reqRemove {
			h.remove(k)
		}
		applyHeaderAdds(ops.reqAdd, h, md)
	}
}

// finalizeResponse applies the route's response header additions and removals
// (route, virtual host, route configuration: response_headers_to_remove is how the
// retry marker never reaches the client), then the router's x-envoy-attempt-count and
// the connection manager's response headers. A local reply gets the route's
// operations first and its own headers after them (finalizeHeaders then
// modify_headers in DownstreamFilterManager::sendLocalReplyViaFilterChain,
// source/common/http/filter_manager.cc), so the caller applies those afterwards.
func (p *Proxy) finalizeRouteResponse(h *headerMap, vh *virtualHost, rt *route, md *dynamicMetadata) {
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
		applyHeaderAdds(o.respAdd, h, md)
	}
}

// routerResponseHeaders adds x-envoy-attempt-count when the virtual host asks for it
// in responses: the router's modify_headers_ (router.cc), which runs for upstream
// responses and the router's own local replies, never for an upstream filter's.
func routerResponseHeaders(h *headerMap, vh *virtualHost, attempts int) {
	if vh != nil && vh.includeAttemptCountInResponse && attempts > 0 {
		h.set("x-envoy-attempt-count", strconv.Itoa(attempts))
	}
}

// connectionManagerResponseHeaders is what the connection manager adds to every
// response on the way out (ConnectionManagerUtility::mutateResponseHeaders).
func (p *Proxy) connectionManagerResponseHeaders(h *headerMap, req *headerMap) {
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
