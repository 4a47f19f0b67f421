package main

import (
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// requestHeaders are those of an OpenAI SDK chat completion as Envoy forwards them
// upstream: pseudo-headers, the SDK's own, Envoy's, and a placeholder credential that
// the server must replace.
func requestHeaders(o options, requestID string, attempt int) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap(
			":method", "POST",
			":path", "/v1/chat/completions",
			":authority", "api.openai.com",
			":scheme", "https",
			"content-type", "application/json",
			"content-length", "187",
			"accept", "application/json",
			"user-agent", "OpenAI/Python 1.99.0",
			"authorization", "Bearer sk-placeholder-from-the-sdk",
			"x-stainless-lang", "python",
			"x-forwarded-proto", "https",
			"x-envoy-expected-rq-timeout-ms", "600000",
			o.requestID, requestID,
			o.attemptCount, strconv.Itoa(attempt),
		)},
	}}
}

// openAIHeadroom are the rate-limit headers OpenAI puts on every answer, here with
// room left: what the server's headroom parser reads on the healthy path.
var openAIHeadroom = []string{ // read-only
	"x-ratelimit-limit-requests", "10000",
	"x-ratelimit-limit-tokens", "30000000",
	"x-ratelimit-remaining-requests", "9999",
	"x-ratelimit-remaining-tokens", "29999812",
	"x-ratelimit-reset-requests", "6ms",
	"x-ratelimit-reset-tokens", "0s",
}

// rateLimitBody is OpenAI's body of a 429 for a spent request limit, with the wait
// its message names: 1ms, which the pool's cooldown bounds then clamp.
const rateLimitBody = `{"error":{"message":"Rate limit reached for gpt-4o in organization org-load on requests per min (RPM): Limit 10000, Used 10000, Requested 1. Please try again in 1ms.","type":"requests","param":null,"code":"rate_limit_exceeded"}}`

// errorBody is an OpenAI error body for the other failure statuses.
func errorBody(code int) string {
	if code == 429 {
		return rateLimitBody
	}
	return `{"error":{"message":"upstream answered ` + strconv.Itoa(code) + `","type":"invalid_request_error","param":null,"code":null}}`
}

// responseHeaders is the response-headers message of an upstream answer with status
// code, as Envoy sends it before the body (end_of_stream false). A 200 carries
// OpenAI's rate-limit headers with room left; a failure carries its body's
// content-length and, for a 429, the spent limit with a 1ms reset.
func responseHeaders(code int) *extprocv3.ProcessingRequest {
	kv := []string{
		":status", strconv.Itoa(code),
		"content-type", "application/json",
		"x-request-id", "upstream-id",
	}
	switch {
	case code < 400:
		kv = append(kv, openAIHeadroom...)
	case code == 429:
		kv = append(kv, "content-length", strconv.Itoa(len(errorBody(code))),
			"x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "1ms")
	default:
		kv = append(kv, "content-length", strconv.Itoa(len(errorBody(code))))
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...)},
	}}
}

// responseBody is the buffered body message Envoy sends when the server asked for
// the body of an answer (mode_override, response_body_mode BUFFERED).
func responseBody(code int) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(errorBody(code)), EndOfStream: true},
	}}
}

func headerMap(kv ...string) *corev3.HeaderMap {
	hm := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(kv)/2)}
	for i := 0; i+1 < len(kv); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return hm
}
