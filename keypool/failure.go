package keypool

import (
	"fmt"
	"time"
)

// Class is what a provider's failure answer says about the key that got it. The class
// is decided once, by package providers, from the status, the headers and (for failure
// statuses only) the small error body; configuration may change the Action a class
// maps to, never the classification.
type Class string

// The failure classes.
const (
	// ClassRateLimited: the key's rate-limit window is spent, and the provider said so
	// (Retry-After, retry-after-ms, a reset header whose remaining count is 0, Gemini's
	// RetryInfo.retryDelay, OpenAI's "Rate limit reached … on tokens per min").
	ClassRateLimited Class = "rate_limited"
	// ClassRateLimitUnconfirmed: a 429 that carries no rate-limit signal at all. It may
	// be the key's, or a provider-wide spike; several requests must agree before the
	// key cools for everyone.
	ClassRateLimitUnconfirmed Class = "rate_limit_unconfirmed"
	// ClassQuota: the key's account is out of credit or billing quota (OpenAI
	// insufficient_quota, Anthropic "credit balance is too low", OpenRouter 402): hours,
	// or until an operator acts.
	ClassQuota Class = "quota"
	// ClassUnauthorized: the key itself is invalid, revoked or deactivated (401, Gemini's
	// 400 API_KEY_INVALID).
	ClassUnauthorized Class = "unauthorized"
	// ClassForbidden: a 403 permission error. It may be about the key or about the
	// request (model access, region), so by default several requests must agree.
	ClassForbidden Class = "forbidden"
	// ClassRequestTooLarge: this request exceeds the key's limit (OpenAI's 429 "Request
	// too large for … tokens per min", Anthropic's 413). Another key may have a higher
	// limit; the key is fine for everyone else.
	ClassRequestTooLarge Class = "request_too_large"
	// ClassOverloaded: the provider is overloaded or failing (Anthropic 529, 5xx). Not a
	// key failure: another key would get the same answer.
	ClassOverloaded Class = "overloaded"
)

// Classes lists every class, in a stable order.
func Classes() []Class {
	return []Class{ClassRateLimited, ClassRateLimitUnconfirmed, ClassQuota, ClassUnauthorized,
		ClassForbidden, ClassRequestTooLarge, ClassOverloaded}
}

// ParseClass returns the Class named s.
func ParseClass(s string) (Class, error) {
	for _, c := range Classes() {
		if string(c) == s {
			return c, nil
		}
	}
	return "", fmt.Errorf("unknown failure class %q (want one of %v)", s, Classes())
}

// Reason is the reason a key cools down for when a failure of class c cools it.
func (c Class) Reason() Reason {
	switch c {
	case ClassRateLimited, ClassRateLimitUnconfirmed, ClassRequestTooLarge, ClassOverloaded:
		return ReasonRateLimited
	case ClassQuota:
		return ReasonQuota
	case ClassUnauthorized:
		return ReasonUnauthorized
	case ClassForbidden:
		return ReasonForbidden
	}
	return ReasonRateLimited
}

// ModelScoped reports whether a cooldown for class c applies to the (key, model) pair
// when the model is known: provider rate limits are per model, credentials and quota
// are the key's.
func (c Class) ModelScoped() bool {
	switch c {
	case ClassRateLimited, ClassRateLimitUnconfirmed, ClassRequestTooLarge, ClassOverloaded:
		return true
	}
	return false
}

// Action is what a pool does about a failure of some class.
type Action string

// The actions.
const (
	// ActionCool marks the key (reason, cooldown) and fails the request over to the
	// next key.
	ActionCool Action = "cool"
	// ActionFailover fails only this request over: it skips the key, nothing is marked.
	ActionFailover Action = "failover"
	// ActionCorroborate fails the request over, and cools the key only when enough
	// distinct requests saw the same class on it within a window.
	ActionCorroborate Action = "corroborate"
	// ActionPass is no key failure: the provider's answer goes to the client unchanged.
	ActionPass Action = "pass"
)

// Actions lists every action, in a stable order.
func Actions() []Action {
	return []Action{ActionCool, ActionFailover, ActionCorroborate, ActionPass}
}

// ParseAction returns the Action named s.
func ParseAction(s string) (Action, error) {
	for _, a := range Actions() {
		if string(a) == s {
			return a, nil
		}
	}
	return "", fmt.Errorf("unknown action %q (want one of %v)", s, Actions())
}

// Failure is a provider's refusal of a key, as package providers classified it.
type Failure struct {
	// Class is what the answer says about the key.
	Class Class
	// Hint is the wait the provider asked for, from its headers or its error body.
	Hint Hint
	// Status is the upstream HTTP status, for logs and metrics.
	Status int
}

// Headroom is what a successful response says about the key's remaining limits
// (OpenAI's x-ratelimit-remaining-*, Anthropic's anthropic-ratelimit-*-remaining). The
// zero value says nothing.
type Headroom struct {
	// Requests is the request limit of the key (for the model, when the provider's
	// limits are per model).
	Requests Remaining
	// Tokens is the tightest token limit the provider reported (Anthropic reports
	// tokens, input tokens and output tokens: the smallest remaining decides).
	Tokens Remaining
}

// Remaining is one limit of a Headroom.
type Remaining struct {
	// Left is how much of the limit is left. Meaningful only when Known.
	Left int64
	// Reset is how long until the limit refills; zero when the provider did not say.
	Reset time.Duration
	// Known is false when the provider sent no usable remaining header for the limit.
	Known bool
}

// Known reports whether h says anything.
func (h Headroom) Known() bool { return h.Requests.Known || h.Tokens.Known }

// String describes f for logs.
func (f Failure) String() string {
	if f.Hint.Known {
		return fmt.Sprintf("%s (status %d, provider asked %s)", f.Class, f.Status, f.Hint.After)
	}
	return fmt.Sprintf("%s (status %d)", f.Class, f.Status)
}
