package providers

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// maxHint bounds every parsed hint before it is turned into a time.Duration, so a
// huge value cannot overflow; the pool's max cooldown clamps it further.
const maxHint = 365 * 24 * time.Hour

// rateLimitHeaders names a provider's rate-limit headers for one limit (requests,
// tokens, …): how much is left and when it resets.
type rateLimitHeaders struct {
	remaining, reset string
}

// retryHint reads the wait a provider asks for, in the order of DESIGN.md:
// retry-after-ms, Retry-After (seconds or HTTP-date), then the provider's rate-limit
// reset headers parsed with parseReset. A header that is present but unusable
// (garbage, negative) is skipped for the next one; with none usable the hint is
// unknown and the pool's default applies.
func retryHint(h Headers, now time.Time, limits []rateLimitHeaders, parseReset func(string, time.Time) (time.Duration, bool)) keypool.Hint {
	if d, ok := parseRetryAfterMs(h.Get("retry-after-ms")); ok {
		return keypool.Hint{After: d, Known: true}
	}
	if d, ok := parseRetryAfter(h.Get("retry-after"), now); ok {
		return keypool.Hint{After: d, Known: true}
	}
	if d, ok := resetHint(h, now, limits, parseReset); ok {
		return keypool.Hint{After: d, Known: true}
	}
	return keypool.Hint{}
}

// resetHint picks among a provider's reset headers. A limit whose remaining count is
// 0 is the one that refused the request, so its reset wins; when none says so, the
// latest reset is the safe guess.
func resetHint(h Headers, now time.Time, limits []rateLimitHeaders, parse func(string, time.Time) (time.Duration, bool)) (time.Duration, bool) {
	var latest, latestExhausted time.Duration
	var found, foundExhausted bool
	for _, l := range limits {
		d, ok := parse(h.Get(l.reset), now)
		if !ok {
			continue
		}
		found, latest = true, max(latest, d)
		if strings.TrimSpace(h.Get(l.remaining)) == "0" {
			foundExhausted, latestExhausted = true, max(latestExhausted, d)
		}
	}
	if foundExhausted {
		return latestExhausted, true
	}
	return latest, found
}

// parseRetryAfterMs reads a retry-after-ms value: milliseconds, possibly fractional.
func parseRetryAfterMs(v string) (time.Duration, bool) {
	ms, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || math.IsNaN(ms) || ms < 0 {
		return 0, false
	}
	return floatDuration(ms, time.Millisecond), true
}

// parseRetryAfter reads a Retry-After value (RFC 9110 §10.2.3): delay-seconds or an
// HTTP-date. A date in the past means now.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(secs) || secs < 0 {
			return 0, false
		}
		return floatDuration(secs, time.Second), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return untilTime(t, now), true
}

// parseGoDuration reads OpenAI's reset format, a Go-style duration ("6m0s", "232ms").
func parseGoDuration(v string, _ time.Time) (time.Duration, bool) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 {
		return 0, false
	}
	return min(d, maxHint), true
}

// parseRFC3339 reads Anthropic's reset format, an RFC 3339 timestamp.
func parseRFC3339(v string, now time.Time) (time.Duration, bool) {
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(v))
	if err != nil {
		return 0, false
	}
	return untilTime(t, now), true
}

func untilTime(t, now time.Time) time.Duration {
	return min(max(t.Sub(now), 0), maxHint)
}

func floatDuration(v float64, unit time.Duration) time.Duration {
	if v*float64(unit) >= float64(maxHint) {
		return maxHint
	}
	return time.Duration(math.Ceil(v * float64(unit)))
}
