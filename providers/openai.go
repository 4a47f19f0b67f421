package providers

import (
	"encoding/json"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// OpenAI is the OpenAI API and the APIs compatible with it (Mistral, Groq, Together,
// …): `Authorization: Bearer <key>`, errors as
// {"error":{"message","type","param","code"}}.
type OpenAI struct{}

// Name implements Provider.
func (OpenAI) Name() string { return "openai" }

// AuthHeader implements Provider.
func (OpenAI) AuthHeader(key string) Header {
	return Header{Name: "authorization", Value: "Bearer " + key}
}

// HasClientCredential implements Provider.
func (OpenAI) HasClientCredential(h Headers) bool {
	return bearerToken(h.Get("authorization")) != ""
}

// openAIRateLimits are OpenAI's x-ratelimit-* headers, reset as Go durations.
func openAIRateLimits() []rateLimitHeaders {
	return []rateLimitHeaders{
		{remaining: "x-ratelimit-remaining-requests", reset: "x-ratelimit-reset-requests"},
		{remaining: "x-ratelimit-remaining-tokens", reset: "x-ratelimit-reset-tokens"},
	}
}

// RetryHint implements Provider.
func (OpenAI) RetryHint(h Headers, now time.Time) keypool.Hint {
	return retryHint(h, now, openAIRateLimits(), parseGoDuration)
}

// ErrorResponse implements Provider. The type and code follow OpenAI's own errors
// where one fits (429 rate_limit_exceeded), so SDKs and clients that branch on them
// keep working.
func (OpenAI) ErrorResponse(e ErrorInfo) Response {
	type apiError struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	}
	ae := apiError{Message: e.Message}
	switch e.Kind {
	case ErrorRateLimited:
		ae.Type, ae.Code = "requests", "rate_limit_exceeded"
	case ErrorKeysRejected:
		ae.Type, ae.Code = "server_error", "upstream_keys_rejected"
	case ErrorNoKeys:
		ae.Type, ae.Code = "server_error", "no_keys_available"
	default:
		ae.Type, ae.Code = "server_error", "keypool_misconfigured"
	}
	body, _ := json.Marshal(struct {
		Error apiError `json:"error"`
	}{ae}) // cannot fail: only strings
	return Response{Status: e.Status, Headers: errorHeaders(e), Body: body}
}
