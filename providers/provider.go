package providers

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Headers reads a header by lower-case name; "" when absent.
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

// Provider is what envoy-keypool needs to know about one LLM provider's API.
type Provider interface {
	// Name is the provider's name in configuration ("openai", "anthropic").
	Name() string
	// AuthHeader is the header that carries key on an upstream request.
	AuthHeader(key string) Header
	// HasClientCredential reports whether the request carries a credential of the
	// client's own in a header this provider reads (for the BYOK policy).
	HasClientCredential(h Headers) bool
	// RetryHint reads how long the provider asks the key to wait, from a response's
	// headers at time now.
	RetryHint(h Headers, now time.Time) keypool.Hint
	// ErrorResponse is an error answer with the given status and message, shaped as
	// the provider's own errors, with the retry-after (zero: none) and request id.
	ErrorResponse(e ErrorInfo) Response
}

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
// through a pooled route.
func CredentialHeaders() []string {
	return []string{"authorization", "x-api-key", "api-key", "x-goog-api-key"}
}

// New returns the provider called name.
func New(name string) (Provider, error) {
	switch name {
	case "openai":
		return OpenAI{}, nil
	case "anthropic":
		return Anthropic{}, nil
	}
	return nil, fmt.Errorf("unknown provider %q (want one of %s)", name, strings.Join(Names(), ", "))
}

// Names lists the providers New knows.
func Names() []string { return []string{"anthropic", "openai"} }

// DefaultFailureStatuses are the upstream statuses that mark a key unless a pool's
// configuration narrows them.
func DefaultFailureStatuses() []int { return []int{401, 403, 429} }

// FailureReason maps an upstream status to the reason a key cools down for. Only
// 401, 403 and 429 are key failures: 5xx and Anthropic's 529 are the provider's own
// overload, and another key would not help.
func FailureReason(status int) (keypool.Reason, bool) {
	switch status {
	case 401:
		return keypool.ReasonUnauthorized, true
	case 403:
		return keypool.ReasonForbidden, true
	case 429:
		return keypool.ReasonRateLimited, true
	}
	return "", false
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
	scheme, token, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// errorHeaders are the headers of every error answer.
func errorHeaders(e ErrorInfo) []Header {
	hs := []Header{{Name: "content-type", Value: "application/json"}}
	if e.RetryAfter > 0 {
		secs := int64((e.RetryAfter + time.Second - 1) / time.Second)
		hs = append(hs, Header{Name: "retry-after", Value: fmt.Sprint(secs)})
	}
	return slices.Clip(hs)
}
