package providers

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Anthropic is the Anthropic Messages API: `x-api-key: <key>` (some clients send
// `Authorization: Bearer`), errors as {"type":"error","error":{"type","message"},
// "request_id"}, rate limits in anthropic-ratelimit-* headers with RFC 3339 resets.
// The zero value is ready to use.
//
// Classification: 401 authentication_error is unauthorized, 403 permission_error
// forbidden, 402 billing_error and a 400 "Your credit balance is too low" quota,
// 413 request_too_large the request's own, 429 rate_limit_error rate_limited (Anthropic
// sends retry-after with it), 529 overloaded_error and 5xx overloaded.
type Anthropic struct{}

// anthropicLimits are Anthropic's rate-limit headers: requests first, then the token
// limits (tokens, input tokens, output tokens).
var anthropicLimits = []limit{ // read-only
	{remaining: "anthropic-ratelimit-requests-remaining", reset: "anthropic-ratelimit-requests-reset", format: resetRFC3339},
	{remaining: "anthropic-ratelimit-tokens-remaining", reset: "anthropic-ratelimit-tokens-reset", format: resetRFC3339},
	{remaining: "anthropic-ratelimit-input-tokens-remaining", reset: "anthropic-ratelimit-input-tokens-reset", format: resetRFC3339},
	{remaining: "anthropic-ratelimit-output-tokens-remaining", reset: "anthropic-ratelimit-output-tokens-reset", format: resetRFC3339},
}

// Name implements Provider.
func (Anthropic) Name() string { return NameAnthropic }

// AuthHeader implements Provider.
func (Anthropic) AuthHeader(key string) Header {
	return Header{Name: "x-api-key", Value: key}
}

// ClientCredential implements Provider: x-api-key, else Authorization: Bearer.
func (Anthropic) ClientCredential(h Headers) string {
	if v := strings.TrimSpace(h.Get("x-api-key")); v != "" {
		return v
	}
	return bearerToken(h.Get("authorization"))
}

// anthropicError is the error object of Anthropic's format.
type anthropicError struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

func decodeAnthropicError(body []byte) (anthropicError, bool) {
	var env struct {
		Error *anthropicError `json:"error"`
	}
	if !decodeBody(body, &env) || env.Error == nil {
		return anthropicError{}, false
	}
	return *env.Error, true
}

// Classify implements Provider.
func (Anthropic) Classify(status int, h Headers, body []byte, now time.Time) (keypool.Failure, bool) {
	if !isFailureStatus(status) {
		return keypool.Failure{}, false
	}
	retry := retryHeaderHint(h, now)
	reset, spent := resetHint(h, now, anthropicLimits)
	e, parsed := decodeAnthropicError(body)
	switch {
	case status == 402, parsed && e.Type == "billing_error",
		status == 400 && parsed && containsFold(e.Message, "credit balance is too low"):
		return failure(keypool.ClassQuota, status, retry)
	case status == 413:
		return failure(keypool.ClassRequestTooLarge, status, keypool.Hint{})
	}
	signal := retry.Known || spent || (status == 429 && parsed && e.Type == "rate_limit_error")
	class, ok := headerClass(status, signal)
	if !ok {
		return keypool.Failure{}, false
	}
	return failure(class, status, firstKnown(retry, reset))
}

// WantsBody implements Provider: a 400's body may say the credit balance is spent, and
// a 429 without retry headers is confirmed by its rate_limit_error type.
func (Anthropic) WantsBody(status int, h Headers) bool {
	switch status {
	case 400:
		return true
	case 429:
		return !retryHeaderHint(h, time.Time{}).Known
	}
	return false
}

// Headroom implements Provider: the request limit, and the tightest of the token limits.
func (Anthropic) Headroom(h Headers, now time.Time) keypool.Headroom {
	return keypool.Headroom{
		Requests: readRemaining(h, now, anthropicLimits[0]),
		Tokens: tightest(
			readRemaining(h, now, anthropicLimits[1]),
			readRemaining(h, now, anthropicLimits[2]),
			readRemaining(h, now, anthropicLimits[3]),
		),
	}
}

// Model implements Provider: Anthropic names the model in the body only.
func (Anthropic) Model(string) string { return "" }

// StripPathCredential implements Provider: see stripKeyParam.
func (Anthropic) StripPathCredential(path string) (string, bool) { return stripKeyParam(path) }

// ErrorResponse implements Provider, with Anthropic's error types.
func (Anthropic) ErrorResponse(e ErrorInfo) Response {
	type apiError struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	ae := apiError{Message: e.Message, Type: "api_error"}
	if e.Kind == ErrorRateLimited {
		ae.Type = "rate_limit_error"
	}
	body, _ := json.Marshal(struct {
		Type      string   `json:"type"`
		Error     apiError `json:"error"`
		RequestID string   `json:"request_id,omitempty"`
	}{"error", ae, e.RequestID}) // cannot fail: only strings
	headers := errorHeaders(e)
	if e.RequestID != "" {
		// Anthropic's SDKs read the request id of an error from this header.
		headers = append(headers, Header{Name: "request-id", Value: e.RequestID})
	}
	return Response{Status: e.Status, Headers: headers, Body: body}
}
