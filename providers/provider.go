package providers

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Headers reads a request's or a response's header by lower-case name; "" when absent.
// Request headers include the pseudo-header ":path".
type Headers interface {
	Get(name string) string
}

// Header is one HTTP header to set.
type Header struct {
	Name  string // lower case
	Value string
}

// Response is a complete answer to the client, in the provider's own format.
type Response struct {
	Status  int
	Headers []Header
	Body    []byte
}

// Provider is what envoy-keypool needs to know about one LLM provider's API. A
// Provider is immutable and safe for concurrent use; its methods do no I/O.
type Provider interface {
	// Name is the provider's name in configuration ("openai", "gemini", …).
	Name() string
	// AuthHeader is the header that carries key on an upstream request. Callers build
	// it once per key: the value is a fresh string.
	AuthHeader(key string) Header
	// ClientCredential is the credential the client sent in a header this provider
	// reads (for Gemini also the ?key= query parameter of ":path"); "" when none. It
	// may be a pool key that an earlier attempt injected into Envoy's shared header
	// map: the caller tells the two apart (keypool.Pool.Owns).
	ClientCredential(h Headers) string
	// Classify says what an upstream answer means for the key that got it. ok is false
	// for an answer that is no key failure at all (2xx, most 4xx, a 403 about the
	// client's region). body is the error body when the caller had Envoy buffer it,
	// nil otherwise: a body that is not JSON, truncated, larger than MaxErrorBody or
	// of an unknown shape yields the header-only class, never an error.
	Classify(status int, h Headers, body []byte, now time.Time) (f keypool.Failure, ok bool)
	// WantsBody reports whether the error body of this answer can change its class or
	// its hint, so that the caller should have Envoy buffer it. False for every status
	// that Classify rejects whatever the body, and for 2xx.
	WantsBody(status int, h Headers) bool
	// Headroom reads the remaining and reset headers of a non-failure answer. It runs
	// on every response, so it allocates nothing.
	Headroom(h Headers, now time.Time) keypool.Headroom
	// Model is the model the upstream request path names (Gemini models/{model}:…,
	// Azure deployments/{name}/…); "" when it names none (the model is in the body).
	Model(path string) string
	// StripPathCredential returns path without a client credential in its query string
	// (Gemini's ?key=, removed by every provider, as CredentialHeaders are), and
	// whether it removed one. It never returns an empty path, and allocates only when
	// it removes something.
	StripPathCredential(path string) (string, bool)
	// ErrorResponse is an error answer with the given status and message, shaped as
	// the provider's own errors, with the retry-after (zero: none) and request id.
	ErrorResponse(e ErrorInfo) Response
}

// MaxErrorBody is the largest error body Classify reads. Providers' error bodies are
// a few hundred bytes (Gemini's with details, about 2 KiB); a larger body is not an
// error body of a known shape and Classify ignores it.
const MaxErrorBody = 64 << 10

// ErrorInfo describes an error answer independently of the provider's format.
type ErrorInfo struct {
	Status     int
	Kind       ErrorKind
	Message    string
	RetryAfter time.Duration
	RequestID  string
}

// ErrorKind classifies an error answer; each provider maps it to its own type names.
type ErrorKind int

// The kinds of error answers envoy-keypool gives.
const (
	// ErrorRateLimited: every key is rate limited (429).
	ErrorRateLimited ErrorKind = iota + 1
	// ErrorKeysRejected: every key failed authentication (502).
	ErrorKeysRejected
	// ErrorNoKeys: no key is enabled (503).
	ErrorNoKeys
	// ErrorMisconfigured: the request cannot be matched to a pool (500).
	ErrorMisconfigured
)

// CredentialHeaders lists every request header through which some provider accepts
// a credential. A pooled request is stripped of all of them before its key is
// injected, whatever its provider: a client credential never reaches a provider
// through a pooled route. (A custom auth header of an openai-compatible pool is
// overwritten by the injected key, so it needs no removal.)
func CredentialHeaders() []string {
	return []string{"authorization", "x-api-key", "api-key", "x-goog-api-key"}
}

// The provider names of configuration.
const (
	NameOpenAI           = "openai"
	NameAnthropic        = "anthropic"
	NameAzureOpenAI      = "azure-openai"
	NameGemini           = "gemini"
	NameOpenAICompatible = "openai-compatible"
)

// Names lists the providers Build knows.
func Names() []string {
	return []string{NameAnthropic, NameAzureOpenAI, NameGemini, NameOpenAI, NameOpenAICompatible}
}

// Spec names a provider and the pool settings that change how it behaves.
type Spec struct {
	// Name is one of Names. Required.
	Name string
	// Compatible configures an openai-compatible provider; ignored by the others.
	Compatible CompatibleOptions
}

// New returns the provider called name with its default settings.
func New(name string) (Provider, error) { return Build(Spec{Name: name}) }

// Build returns the provider s describes.
func Build(s Spec) (Provider, error) {
	switch s.Name {
	case NameOpenAI:
		return OpenAI{}, nil
	case NameAnthropic:
		return Anthropic{}, nil
	case NameAzureOpenAI:
		return AzureOpenAI{}, nil
	case NameGemini:
		return Gemini{}, nil
	case NameOpenAICompatible:
		return NewCompatible(s.Compatible)
	}
	return nil, fmt.Errorf("unknown provider %q (want one of %s)", s.Name, strings.Join(Names(), ", "))
}

// ExhaustedError is the client's answer when no key of the pool can serve.
func ExhaustedError(p Provider, err *keypool.ExhaustedError, requestID string) Response {
	info := ErrorInfo{Message: err.Error(), RequestID: requestID}
	switch err.Kind {
	case keypool.ExhaustedRateLimited:
		info.Status, info.Kind, info.RetryAfter = 429, ErrorRateLimited, err.RetryAfter
	case keypool.ExhaustedAuthFailed:
		info.Status, info.Kind = 502, ErrorKeysRejected
	default:
		info.Status, info.Kind = 503, ErrorNoKeys
	}
	return p.ErrorResponse(info)
}

// bearerToken returns the token of an "Authorization: Bearer <token>" value.
func bearerToken(authorization string) string {
	return schemeToken(authorization, "Bearer")
}

// schemeToken returns the credential of an "<scheme> <credential>" value, the scheme
// compared case-insensitively (RFC 9110 §11.1); "" when the scheme differs. An empty
// scheme means the whole value is the credential.
func schemeToken(value, scheme string) string {
	value = strings.TrimSpace(value)
	if scheme == "" {
		return value
	}
	s, token, ok := strings.Cut(value, " ")
	if !ok || !strings.EqualFold(s, scheme) {
		return ""
	}
	return strings.TrimSpace(token)
}

// errorHeaders are the headers of every error answer.
func errorHeaders(e ErrorInfo) []Header {
	hs := []Header{{Name: "content-type", Value: "application/json"}}
	if e.RetryAfter > 0 {
		hs = append(hs, Header{Name: "retry-after", Value: strconv.FormatInt(retryAfterSeconds(e.RetryAfter), 10)})
	}
	return slices.Clip(hs)
}

// retryAfterSeconds rounds d up to whole seconds, as Retry-After carries them.
func retryAfterSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
