package keypool

import (
	"slices"
	"time"
)

// walk chooses the key for one attempt: the first key in priority order that is not
// cooling down at now and that this request has not tried yet. When there is none it
// returns the ExhaustedError that says why.
func walk(pool string, keys []Key, now time.Time, cooldownOf func(ref string) Cooldown, tried []string) (Key, error) {
	for _, k := range keys {
		if !cooldownOf(k.ref).ActiveAt(now) && !slices.Contains(tried, k.ref) {
			return k, nil
		}
	}
	return Key{}, exhaustion(pool, keys, now, cooldownOf)
}

// exhaustion classifies a pool in which walk found no key.
//   - Any key cooling for a rate limit, or tried by this request but no longer cooling,
//     will serve again soon: 429 with Retry-After = time until the soonest key returns.
//   - Otherwise any key refused by the provider (401, 403): 502.
//   - Otherwise every key is disabled by an operator (or the pool is empty): 503.
func exhaustion(pool string, keys []Key, now time.Time, cooldownOf func(ref string) Cooldown) *ExhaustedError {
	var (
		soonRetry bool
		authFail  bool
		soonest   time.Duration = -1
	)
	for _, k := range keys {
		c := cooldownOf(k.ref)
		if !c.ActiveAt(now) {
			// Usable again, only not for this request: a new request may take it now.
			soonRetry = true
			soonest = 0
			continue
		}
		if c.Reason == ReasonDisabled {
			continue
		}
		if c.Reason.authFailure() {
			authFail = true
		} else {
			soonRetry = true
		}
		if wait := c.Until.Sub(now); soonest < 0 || wait < soonest {
			soonest = wait
		}
	}
	err := &ExhaustedError{Pool: pool, Keys: len(keys)}
	switch {
	case soonRetry:
		err.Kind = ExhaustedRateLimited
		err.RetryAfter = retryAfterSeconds(soonest)
	case authFail:
		err.Kind = ExhaustedAuthFailed
	default:
		err.Kind = ExhaustedUnavailable
	}
	return err
}
