package main

import (
	"strconv"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/envoy-keypool/envoy-keypool/internal/extprocfixture"
)

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

// responseHeaders is the shared fixture's response-headers message of an upstream
// answer with status code, as Envoy sends it before the body (end_of_stream false). A 200 carries
// OpenAI's rate-limit headers with room left; a failure carries its body's
// content-length and, for a 429, the spent limit with a 1ms reset.
func responseHeaders(code int) *extprocv3.ProcessingRequest {
	var kv []string
	switch {
	case code < 400:
		kv = extprocfixture.OpenAIHeadroom()
	case code == 429:
		kv = append(kv, "content-length", strconv.Itoa(len(errorBody(code))),
			"x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "1ms")
	default:
		kv = append(kv, "content-length", strconv.Itoa(len(errorBody(code))))
	}
	return extprocfixture.ResponseHeaders(code, kv...)
}

// responseBody is the buffered body message Envoy sends when the server asked for
// the body of an answer (mode_override, response_body_mode BUFFERED).
func responseBody(code int) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(errorBody(code)), EndOfStream: true},
	}}
}
