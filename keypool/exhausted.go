package keypool

import (
	"errors"
	"fmt"
	"time"
)

// ExhaustionKind says why no key of a pool could serve a request.
type ExhaustionKind int

// The kinds of exhaustion, each answered differently to the client.
const (
	// ExhaustedRateLimited: at least one key will be usable again: it cools for a
	// rate limit, its limit is spent (depleted), its account is out of quota (OpenAI
	// itself answers insufficient_quota with a 429), another request probes it, or
	// this request already tried it. Answered 429 with Retry-After = the time until
	// the soonest key returns (1s when a key serves a new request now).
	ExhaustedRateLimited ExhaustionKind = iota + 1
	// ExhaustedAuthFailed: every key that is not disabled cools down because the
	// provider refused it (401 or 403). Answered 502.
	ExhaustedAuthFailed
	// ExhaustedUnavailable: the pool has no key an operator left enabled. Answered 503.
	ExhaustedUnavailable
)

func (k ExhaustionKind) String() string {
	switch k {
	case ExhaustedRateLimited:
		return "rate_limited"
	case ExhaustedAuthFailed:
		return "auth_failed"
	case ExhaustedUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("ExhaustionKind(%d)", int(k))
}

// ErrExhausted matches every *ExhaustedError with errors.Is.
var ErrExhausted = errors.New("no usable key")

// ExhaustedError is returned by Pick when no key of the pool can serve the attempt.
type ExhaustedError struct {
	Pool string
	Kind ExhaustionKind
	// RetryAfter is the time until the soonest key returns, rounded up to whole
	// seconds and at least one second. Zero unless Kind is ExhaustedRateLimited.
	RetryAfter time.Duration
	// Keys is the size of the pool.
	Keys int
	// Model is the model the attempt asked for (bounded by ModelName): the kind and
	// the retry-after are this model's. "" when unknown.
	Model string
}

func (e *ExhaustedError) Error() string {
	forModel := ""
	if e.Model != "" {
		forModel = fmt.Sprintf(" for model %q", e.Model)
	}
	switch e.Kind {
	case ExhaustedRateLimited:
		return fmt.Sprintf("all %d keys of pool %q are rate limited%s or already tried by this request; retry after %s",
			e.Keys, e.Pool, forModel, e.RetryAfter)
	case ExhaustedAuthFailed:
		return fmt.Sprintf("all %d keys of pool %q failed authentication", e.Keys, e.Pool)
	default:
		return fmt.Sprintf("pool %q has no enabled key", e.Pool)
	}
}

// Is makes errors.Is(err, ErrExhausted) true.
func (e *ExhaustedError) Is(target error) bool { return target == ErrExhausted }

// retryAfterSeconds rounds d up to whole seconds, at least one.
func retryAfterSeconds(d time.Duration) time.Duration {
	if d <= time.Second {
		return time.Second
	}
	return (d + time.Second - 1).Truncate(time.Second)
}
