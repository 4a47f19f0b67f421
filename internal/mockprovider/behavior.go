package mockprovider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"time"
)

// Behavior is how the mock answers the requests that carry one credential.
// The zero value answers 200 at once.
//
// In JSON (the /_mock/ API and the --behaviors file) it reads
//
//	{"status": 429, "error_type": "requests", "error_code": "rate_limit_exceeded",
//	 "message": "slow down", "headers": {"Retry-After": "7"}, "delay": "1.5s",
//	 "failure": "quota", "retry_delay": "52s", "body": "{...}", "body_size": 1048576,
//	 "rate_limit": {"remaining_requests": 0, "remaining_tokens": 900, "reset": "5s"},
//	 "models": {"gpt-4o": {"status": 429}}}
//
// with every field optional and unknown fields rejected, so that a typo is an error
// instead of a silently healthy key.
type Behavior struct {
	// Status is the HTTP status answered: 0 or 200 for a normal answer (JSON, or SSE
	// when the request asked to stream), 400-599 for an error with a body in the
	// provider's own format. Default 0, or the status of Failure.
	Status int
	// Failure answers with the provider's documented error for a failure class (see
	// [Failures]): its status (unless Status is set) and its body (type, code, Gemini's
	// details), e.g. "quota" is OpenAI's 429 insufficient_quota, Anthropic's 400 "credit
	// balance is too low", Gemini's per-day RESOURCE_EXHAUSTED. Default none.
	Failure string
	// ErrorType replaces the provider's error type for Status (OpenAI error.type,
	// Anthropic error.type, Gemini error.status). Default: the type the provider uses
	// for Status.
	ErrorType string
	// ErrorCode replaces OpenAI's and Azure's error.code, and the reason of Gemini's
	// ErrorInfo detail; Anthropic bodies have no code. Default: the code the provider
	// uses for Status, or none.
	ErrorCode string
	// Message replaces the error message. Default: a message naming the status.
	Message string
	// RetryDelay is the wait an error body states: Gemini's RetryInfo.retryDelay,
	// Azure's "Please retry after N seconds", OpenAI's "Please try again in Ns". Zero:
	// the provider's default body says none (Gemini's rate limits say 1s).
	RetryDelay time.Duration
	// Body replaces the whole error body, sent as is (a shape no provider documents,
	// truncated JSON, HTML). Only with an error Status or Failure. Default: the
	// provider's format.
	Body string
	// BodySize pads the error body with trailing JSON white space to at least this many
	// bytes (a large error body; it stays valid JSON). Default 0.
	BodySize int
	// RateLimit sets the provider's own remaining and reset headers on every answer
	// (OpenAI's x-ratelimit-* with durations, Anthropic's anthropic-ratelimit-* with
	// RFC 3339 times computed when the answer is sent, Azure's remaining only).
	// Default none.
	RateLimit *RateLimit
	// Headers are set on every answer for this key, error or not: for example
	// Retry-After, retry-after-ms, x-ratelimit-reset-requests or
	// anthropic-ratelimit-requests-reset. Default none.
	Headers map[string]string
	// Delay holds the answer back this long (a "slow" key). When the request's
	// context ends first, the wait ends and the response is aborted (connection
	// closed, no status). Default 0.
	Delay time.Duration
	// Models replaces the whole behaviour for the requests naming a model (in the
	// body, or the path for Gemini and Azure deployments): key 1 rate limited on
	// model A only. A model's behaviour has no Models of its own. Default none.
	Models map[string]Behavior
}

// RateLimit is what a key's answers say about its limits, written in each
// provider's own headers.
type RateLimit struct {
	// RemainingRequests and RemainingTokens are the counts left; nil sends none.
	RemainingRequests, RemainingTokens *int64
	// Reset is when both limits refill, from the moment the answer is sent.
	Reset time.Duration
}

// rateLimitJSON is RateLimit on the wire.
type rateLimitJSON struct {
	RemainingRequests *int64 `json:"remaining_requests,omitempty"`
	RemainingTokens   *int64 `json:"remaining_tokens,omitempty"`
	Reset             string `json:"reset,omitempty"`
}

// behaviorJSON is Behavior on the wire: durations as Go duration strings ("250ms"),
// because nanosecond integers are unreadable in a compose file.
type behaviorJSON struct {
	Status     int                     `json:"status,omitempty"`
	Failure    string                  `json:"failure,omitempty"`
	ErrorType  string                  `json:"error_type,omitempty"`
	ErrorCode  string                  `json:"error_code,omitempty"`
	Message    string                  `json:"message,omitempty"`
	RetryDelay string                  `json:"retry_delay,omitempty"`
	Body       string                  `json:"body,omitempty"`
	BodySize   int                     `json:"body_size,omitempty"`
	RateLimit  *rateLimitJSON          `json:"rate_limit,omitempty"`
	Headers    map[string]string       `json:"headers,omitempty"`
	Delay      string                  `json:"delay,omitempty"`
	Models     map[string]behaviorJSON `json:"models,omitempty"`
}

func (b Behavior) wire() behaviorJSON {
	w := behaviorJSON{
		Status: b.Status, Failure: b.Failure, ErrorType: b.ErrorType, ErrorCode: b.ErrorCode,
		Message: b.Message, Body: b.Body, BodySize: b.BodySize, Headers: b.Headers,
	}
	if b.RetryDelay != 0 {
		w.RetryDelay = b.RetryDelay.String()
	}
	if b.Delay != 0 {
		w.Delay = b.Delay.String()
	}
	if r := b.RateLimit; r != nil {
		w.RateLimit = &rateLimitJSON{RemainingRequests: r.RemainingRequests, RemainingTokens: r.RemainingTokens}
		if r.Reset != 0 {
			w.RateLimit.Reset = r.Reset.String()
		}
	}
	for model, mb := range b.Models {
		if w.Models == nil {
			w.Models = make(map[string]behaviorJSON, len(b.Models))
		}
		w.Models[model] = mb.wire()
	}
	return w
}

// MarshalJSON writes b in the wire form described on [Behavior].
func (b Behavior) MarshalJSON() ([]byte, error) { return json.Marshal(b.wire()) }

// fromWire converts the wire form, naming the field of a bad duration.
func fromWire(w behaviorJSON) (Behavior, error) {
	out := Behavior{
		Status: w.Status, Failure: w.Failure, ErrorType: w.ErrorType, ErrorCode: w.ErrorCode,
		Message: w.Message, Body: w.Body, BodySize: w.BodySize, Headers: w.Headers,
	}
	var errs []error
	parse := func(field, v string, into *time.Duration) {
		if v == "" {
			return
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("decode behavior %s: %w", field, err))
		}
		*into = d
	}
	parse("delay", w.Delay, &out.Delay)
	parse("retry_delay", w.RetryDelay, &out.RetryDelay)
	if r := w.RateLimit; r != nil {
		out.RateLimit = &RateLimit{RemainingRequests: r.RemainingRequests, RemainingTokens: r.RemainingTokens}
		parse("rate_limit.reset", r.Reset, &out.RateLimit.Reset)
	}
	for model, mw := range w.Models {
		mb, err := fromWire(mw)
		if err != nil {
			errs = append(errs, fmt.Errorf("model %q: %w", model, err))
		}
		if out.Models == nil {
			out.Models = make(map[string]Behavior, len(w.Models))
		}
		out.Models[model] = mb
	}
	return out, errors.Join(errs...)
}

// UnmarshalJSON reads the wire form described on [Behavior], rejecting unknown fields
// and invalid values.
func (b *Behavior) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w behaviorJSON
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("decode behavior: %w", err)
	}
	out, err := fromWire(w)
	if err != nil {
		return err
	}
	if err := out.Validate(); err != nil {
		return err
	}
	*b = out
	return nil
}

// ErrInvalidBehavior is wrapped by every error about a behaviour that cannot be served.
var ErrInvalidBehavior = errors.New("invalid behavior")

// Validate reports whether the mock can serve b.
func (b Behavior) Validate() error {
	var errs []error
	if b.Status != 0 && b.Status != http.StatusOK && (b.Status < 400 || b.Status > 599) {
		errs = append(errs, fmt.Errorf("%w: status %d: want 0, 200 or 400-599", ErrInvalidBehavior, b.Status))
	}
	if b.Failure != "" && !slices.Contains(Failures(), b.Failure) {
		errs = append(errs, fmt.Errorf("%w: failure %q: want one of %v", ErrInvalidBehavior, b.Failure, Failures()))
	}
	if b.Failure != "" && b.Status == http.StatusOK {
		errs = append(errs, fmt.Errorf("%w: failure %q with status 200", ErrInvalidBehavior, b.Failure))
	}
	if (b.Body != "" || b.BodySize != 0) && !b.isError() {
		errs = append(errs, fmt.Errorf("%w: body and body_size need an error status or a failure", ErrInvalidBehavior))
	}
	if b.BodySize < 0 || b.BodySize > maxBodySize {
		errs = append(errs, fmt.Errorf("%w: body_size %d outside [0, %d]", ErrInvalidBehavior, b.BodySize, maxBodySize))
	}
	if b.Delay < 0 || b.RetryDelay < 0 || b.RateLimit != nil && b.RateLimit.Reset < 0 {
		errs = append(errs, fmt.Errorf("%w: negative duration", ErrInvalidBehavior))
	}
	for name := range b.Headers {
		if name == "" {
			errs = append(errs, fmt.Errorf("%w: empty header name", ErrInvalidBehavior))
		}
	}
	for model, mb := range b.Models {
		if len(mb.Models) > 0 {
			errs = append(errs, fmt.Errorf("%w: model %q: a model's behaviour has no models of its own", ErrInvalidBehavior, model))
		}
		if err := mb.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("model %q: %w", model, err))
		}
	}
	return errors.Join(errs...)
}

// maxBodySize bounds BodySize: 16 MiB is past every buffer limit a test may probe.
const maxBodySize = 16 << 20

// isError reports whether b answers with an error body.
func (b Behavior) isError() bool { return b.Status >= 400 || b.Failure != "" && b.Status == 0 }

// forModel is the behaviour for a request naming model.
func (b Behavior) forModel(model string) Behavior {
	if mb, ok := b.Models[model]; ok && model != "" {
		return mb
	}
	return b
}

// clone returns b with its own maps, so that a stored behaviour never shares memory
// with a caller who may mutate it.
func (b Behavior) clone() Behavior {
	b.Headers = maps.Clone(b.Headers)
	if b.RateLimit != nil {
		r := *b.RateLimit
		b.RateLimit = &r
	}
	if b.Models != nil {
		models := make(map[string]Behavior, len(b.Models))
		for m, mb := range b.Models {
			models[m] = mb.clone()
		}
		b.Models = models
	}
	return b
}

// DecodeBehaviors reads a JSON object from credential value to [Behavior], the format
// of the --behaviors file and of POST /_mock/keys.
func DecodeBehaviors(r io.Reader) (map[string]Behavior, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var m map[string]Behavior
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode behaviors: %w", err)
	}
	if err := validateBehaviors(m); err != nil {
		return nil, err
	}
	return m, nil
}

// validateBehaviors checks every key and behaviour of m, naming each bad key.
func validateBehaviors(m map[string]Behavior) error {
	var errs []error
	for key, b := range m {
		if key == "" {
			errs = append(errs, fmt.Errorf("%w: empty key", ErrInvalidBehavior))
			continue
		}
		if err := b.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("key %q: %w", key, err))
		}
	}
	return errors.Join(errs...)
}
