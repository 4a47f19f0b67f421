// Package extprocfixture holds the ext_proc messages that the extproc benchmarks and
// the load tool (internal/cmd/keypool-load) send, so that both measure the same
// message: the request headers of an OpenAI SDK chat completion as Envoy's upstream
// ext_proc filter forwards them, and the provider's response headers.
//
// It is test harness: nothing that ships imports it.
package extprocfixture

import (
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// Names are the header names the server under test and Envoy's configuration agree
// on. The zero value uses envoy-keypool's defaults.
type Names struct {
	// RequestID correlates the attempts of a request. Default x-request-id.
	RequestID string
	// AttemptCount numbers the attempts. Default x-envoy-attempt-count.
	AttemptCount string
}

func (n Names) withDefaults() Names {
	if n.RequestID == "" {
		n.RequestID = "x-request-id"
	}
	if n.AttemptCount == "" {
		n.AttemptCount = "x-envoy-attempt-count"
	}
	return n
}

// PlaceholderCredential is the credential the client sends: an SDK behind a gateway
// has to send something, and the server must replace it.
const PlaceholderCredential = "Bearer placeholder-from-the-sdk"

// RequestHeaders is the request-headers message of one attempt of an OpenAI SDK chat
// completion: pseudo-headers, the SDK's own headers, those Envoy adds, and the
// placeholder credential; 14 headers in all, as Envoy sends them (lower-case names,
// values in raw_value).
func RequestHeaders(n Names, requestID string, attempt int) *extprocv3.ProcessingRequest {
	n = n.withDefaults()
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: HeaderMap(
			":method", "POST",
			":path", "/v1/chat/completions",
			":authority", "api.openai.com",
			":scheme", "https",
			"content-type", "application/json",
			"content-length", "187",
			"accept", "application/json",
			"user-agent", "OpenAI/Python 1.99.0",
			"authorization", PlaceholderCredential,
			"x-stainless-lang", "python",
			"x-forwarded-proto", "https",
			"x-envoy-expected-rq-timeout-ms", "600000",
			n.RequestID, requestID,
			n.AttemptCount, strconv.Itoa(attempt),
		)},
	}}
}

// ResponseHeaders is the response-headers message of an upstream answer with status
// code: a JSON answer with OpenAI's request-id header, followed by extra (name,
// value pairs) such as rate-limit headers. The body follows (end_of_stream false),
// as it does for every provider answer.
func ResponseHeaders(code int, extra ...string) *extprocv3.ProcessingRequest {
	kv := append([]string{
		":status", strconv.Itoa(code),
		"content-type", "application/json",
		"x-request-id", "upstream-id",
	}, extra...)
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: HeaderMap(kv...)},
	}}
}

// OpenAIHeadroom are the rate-limit headers OpenAI puts on every successful answer,
// with room left: what the headroom parser reads on the healthy path.
func OpenAIHeadroom() []string {
	return []string{
		"x-ratelimit-limit-requests", "10000",
		"x-ratelimit-limit-tokens", "30000000",
		"x-ratelimit-remaining-requests", "9999",
		"x-ratelimit-remaining-tokens", "29999812",
		"x-ratelimit-reset-requests", "6ms",
		"x-ratelimit-reset-tokens", "0s",
	}
}

// HeaderMap builds a HeaderMap from name, value pairs, values in raw_value.
func HeaderMap(kv ...string) *corev3.HeaderMap {
	hm := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(kv)/2)}
	for i := 0; i+1 < len(kv); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return hm
}
