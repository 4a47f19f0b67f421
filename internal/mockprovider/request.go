package mockprovider

import (
	"net/http"
	"time"
)

// Provider names the API a request was addressed to, decided by its path.
type Provider string

// The providers the mock imitates.
const (
	OpenAI    Provider = "openai"    // POST /v1/chat/completions
	Anthropic Provider = "anthropic" // POST /v1/messages
	// AzureOpenAI: POST /openai/deployments/{deployment}/chat/completions, and the v1
	// API's POST /openai/v1/chat/completions with an api-key header.
	AzureOpenAI Provider = "azure-openai"
	// Gemini: POST /{version}/models/{model}:generateContent and :streamGenerateContent.
	Gemini Provider = "gemini"
	// OpenAICompatible: POST …/chat/completions under any other base path
	// (/openai/v1 for Groq, /api/v1 for OpenRouter, /inference/v1 for Fireworks, …).
	OpenAICompatible Provider = "openai-compatible"
)

// credentialHeaders are the headers that carry a provider credential (PROVIDERS.md).
// Every one present is recorded, whichever the provider reads, so that tests can prove
// a client-supplied credential was stripped before it reached the provider.
var credentialHeaders = [...]string{"Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key"}

// Request is the record of one provider request the mock answered (or gave up on
// because the client went away).
type Request struct {
	// ID is the request id the mock answered with (x-request-id for OpenAI,
	// request-id for Anthropic, also in Anthropic error bodies).
	ID string `json:"id"`
	// Time is when the request arrived.
	Time     time.Time `json:"time"`
	Provider Provider  `json:"provider"`
	Method   string    `json:"method"`
	Path     string    `json:"path"`
	// Query is the raw query string as it arrived (a stripped ?key= is absent from it).
	Query string `json:"query,omitempty"`
	// Key is the credential the mock read (see the package doc) and chose the
	// behaviour by; "" when the request carried none.
	Key string `json:"key"`
	// CredentialHeaders holds every credential-bearing header present (Authorization,
	// X-Api-Key, Api-Key, X-Goog-Api-Key), under canonical names, values as sent.
	CredentialHeaders http.Header `json:"credential_headers,omitempty"`
	// QueryKey is the ?key= query parameter (Gemini's credential), if present.
	QueryKey string `json:"query_key,omitempty"`
	// ClientRequestID is the request's own x-request-id (the proxy's, the same on
	// every attempt of one client request), to count attempts per request.
	ClientRequestID string `json:"client_request_id,omitempty"`
	// AttemptCount is the x-envoy-attempt-count header the request carried.
	AttemptCount string `json:"attempt_count,omitempty"`
	// Model is the model the body named (the path, for Gemini and Azure deployments).
	Model string `json:"model,omitempty"`
	// Stream is whether the body asked for stream: true; an OK answer then streamed.
	Stream bool `json:"stream"`
	// Status is the status answered; 0 when Canceled.
	Status int `json:"status"`
	// Canceled is set when the request's context ended while a slow key held the
	// answer (client gone, server shutting down); the response was then aborted.
	Canceled bool `json:"canceled,omitempty"`
}

// collectCredentialHeaders copies the credential-bearing headers of h; nil when none.
func collectCredentialHeaders(h http.Header) http.Header {
	var out http.Header
	for _, name := range credentialHeaders {
		vs := h.Values(name)
		if len(vs) == 0 {
			continue
		}
		if out == nil {
			out = make(http.Header)
		}
		out[name] = append([]string(nil), vs...)
	}
	return out
}
