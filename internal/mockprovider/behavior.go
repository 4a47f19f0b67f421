package mockprovider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"time"
)

// Behavior is how the mock answers the requests that carry one credential.
// The zero value answers 200 at once.
//
// In JSON (the /_mock/ API and the --behaviors file) it reads
//
//	{"status": 429, "error_type": "requests", "error_code": "rate_limit_exceeded",
//	 "message": "slow down", "headers": {"Retry-After": "7"}, "delay": "1.5s"}
//
// with every field optional and unknown fields rejected, so that a typo is an error
// instead of a silently healthy key.
type Behavior struct {
	// Status is the HTTP status answered: 0 or 200 for a normal answer (JSON, or SSE
	// when the request asked to stream), 400-599 for an error with a body in the
	// provider's own format. Default 0.
	Status int
	// ErrorType replaces the provider's error type for Status (OpenAI error.type,
	// Anthropic error.type). Default: the type the provider uses for Status.
	ErrorType string
	// ErrorCode replaces OpenAI's error.code; Anthropic bodies have no code.
	// Default: the code OpenAI uses for Status, or null.
	ErrorCode string
	// Message replaces the error message. Default: a message naming the status.
	Message string
	// Headers are set on every answer for this key, error or not: for example
	// Retry-After, retry-after-ms, x-ratelimit-reset-requests or
	// anthropic-ratelimit-requests-reset. Default none.
	Headers map[string]string
	// Delay holds the answer back this long (a "slow" key). When the request's
	// context ends first, the wait ends and the response is aborted (connection
	// closed, no status). Default 0.
	Delay time.Duration
}

// behaviorJSON is Behavior on the wire: Delay as a Go duration string ("250ms"),
// because nanosecond integers are unreadable in a compose file.
type behaviorJSON struct {
	Status    int               `json:"status,omitempty"`
	ErrorType string            `json:"error_type,omitempty"`
	ErrorCode string            `json:"error_code,omitempty"`
	Message   string            `json:"message,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	Delay     string            `json:"delay,omitempty"`
}

// MarshalJSON writes b in the wire form described on [Behavior].
func (b Behavior) MarshalJSON() ([]byte, error) {
	w := behaviorJSON{
		Status:    b.Status,
		ErrorType: b.ErrorType,
		ErrorCode: b.ErrorCode,
		Message:   b.Message,
		Headers:   b.Headers,
	}
	if b.Delay != 0 {
		w.Delay = b.Delay.String()
	}
	return json.Marshal(w)
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
	out := Behavior{
		Status:    w.Status,
		ErrorType: w.ErrorType,
		ErrorCode: w.ErrorCode,
		Message:   w.Message,
		Headers:   w.Headers,
	}
	if w.Delay != "" {
		d, err := time.ParseDuration(w.Delay)
		if err != nil {
			return fmt.Errorf("decode behavior delay: %w", err)
		}
		out.Delay = d
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
	if b.Delay < 0 {
		errs = append(errs, fmt.Errorf("%w: negative delay %s", ErrInvalidBehavior, b.Delay))
	}
	for name := range b.Headers {
		if name == "" {
			errs = append(errs, fmt.Errorf("%w: empty header name", ErrInvalidBehavior))
		}
	}
	return errors.Join(errs...)
}

// isError reports whether b answers with an error body.
func (b Behavior) isError() bool { return b.Status >= 400 }

// clone returns b with its own Headers map, so that a stored behaviour never shares
// memory with a caller who may mutate it.
func (b Behavior) clone() Behavior {
	b.Headers = maps.Clone(b.Headers)
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
