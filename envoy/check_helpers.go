package envoy

import (
	"cmp"
	"maps"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// sameModeAs matches a processing mode equal to want in every field Envoy compares
// for allowed_override_modes: all but request_header_mode
// (ext_proc/allowed_override_modes_set.h).
func sameModeAs(want *extprocv3.ProcessingMode) func(*extprocv3.ProcessingMode) bool {
	return func(m *extprocv3.ProcessingMode) bool {
		return m.GetResponseHeaderMode() == want.GetResponseHeaderMode() &&
			m.GetRequestBodyMode() == want.GetRequestBodyMode() &&
			m.GetResponseBodyMode() == want.GetResponseBodyMode() &&
			m.GetRequestTrailerMode() == want.GetRequestTrailerMode() &&
			m.GetResponseTrailerMode() == want.GetResponseTrailerMode()
	}
}

func modeString(m *extprocv3.ProcessingMode) string {
	return "{response_header_mode: " + m.GetResponseHeaderMode().String() +
		", request_body_mode: " + m.GetRequestBodyMode().String() +
		", response_body_mode: " + m.GetResponseBodyMode().String() +
		", request_trailer_mode: " + m.GetRequestTrailerMode().String() +
		", response_trailer_mode: " + m.GetResponseTrailerMode().String() + "}"
}

// upstreamTLSContext decodes a TLS transport socket's configuration; nil when it is
// not one.
func upstreamTLSContext(ts *corev3.TransportSocket) *tlsv3.UpstreamTlsContext {
	tc := &tlsv3.UpstreamTlsContext{}
	if ts.GetTypedConfig().GetTypeUrl() != typeUpstreamTLS || ts.GetTypedConfig().UnmarshalTo(tc) != nil {
		return nil
	}
	return tc
}

func headerValue(hv *corev3.HeaderValue) string {
	if len(hv.GetRawValue()) > 0 {
		return string(hv.GetRawValue())
	}
	return hv.GetValue()
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.SortedFunc(maps.Keys(m), cmp.Compare[string])
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strconv.Quote(s)
	}
	return out
}
