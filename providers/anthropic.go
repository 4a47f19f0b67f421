package providers

import (
	"encoding/json"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Anthropic is the Anthropic Messages API: `x-api-key: <key>` (some clients send
// `Authorization: Bearer`), errors as {"type":"error","error":{"type","message"},
// "request_id"}.
type Anthropic struct{}

// Name implements Provider.
func (Anthropic) Name() string { return "anthropic" }

// AuthHeader implements Provider.
func (Anthropic) AuthHeader(key string) Header {
	return Header{Name: "x-api-key", Value: key}
}

// HasClientCredential implements Provider.
func (Anthropic) HasClientCredential(h Headers) bool {
	return h.Get("x-api-key") != "" || bearerToken(h.Get("authorization")) != ""
}

// anthropicRateLimits are Anthropic's anthropic-ratelimit-* headers, reset as
// RFC 3339 timestamps.
func anthropicRateLimits() []rateLimitHeaders {
	return []rateLimitHeaders{
		{remaining: "anthropic-ratelimit-requests-remaining", reset: "anthropic-ratelimit-requests-reset"},
		{remaining: "anthropic-ratelimit-tokens-remaining", reset: "anthropic-ratelimit-tokens-reset"},
		{remaining: "anthropic-ratelimit-input-tokens-remaining", reset: "anthropic-ratelimit-input-tokens-reset"},
		{remaining: "anthropic-ratelimit-output-tokens-remaining", reset: "anthropic-ratelimit-output-tokens-reset"},
	}
}

// RetryHint implements Provider.
func (Anthropic) RetryHint(h Headers, now time.Time) keypool.Hint {
	return retryHint(h, now, anthropicRateLimits(), parseRFC3339)
}

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
