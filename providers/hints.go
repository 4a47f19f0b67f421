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

// resetFormat is how a provider writes the reset of a rate limit.
type resetFormat uint8

const (
	// resetDuration is a Go-style duration ("6m0s", "232ms", "2m59.56s": OpenAI, Groq),
	// or plain seconds.
	resetDuration resetFormat = iota
	// resetRFC3339 is a timestamp ("2026-11-25T12:00:42Z": Anthropic).
	resetRFC3339
	// resetSeconds is seconds from now, possibly fractional ("11.382867": Cerebras,
	// Together), or a Go-style duration.
	resetSeconds
	// resetUnixMillis is a Unix time in milliseconds (OpenRouter).
	resetUnixMillis
)

// limit names one rate limit's headers: how much is left, and when it refills.
type limit struct {
	remaining, reset string
	format           resetFormat
}

// retryHeaderHint reads the wait a response asks for in the generic retry headers, in
// the order of DESIGN.md: retry-after-ms (and Azure's x-ms-retry-after-ms), then
// Retry-After (seconds or HTTP-date). A header that is present but unusable (garbage,
// negative) is skipped for the next one.
func retryHeaderHint(h Headers, now time.Time) keypool.Hint {
	if d, ok := parseRetryAfterMs(h.Get("retry-after-ms")); ok {
		return keypool.Hint{After: d, Known: true}
	}
	if d, ok := parseRetryAfterMs(h.Get("x-ms-retry-after-ms")); ok {
		return keypool.Hint{After: d, Known: true}
	}
	if d, ok := parseRetryAfter(h.Get("retry-after"), now); ok {
		return keypool.Hint{After: d, Known: true}
	}
	return keypool.Hint{}
}

// resetHint picks among a provider's rate limits. A limit whose remaining count is 0
// is the one that refused the request (spent reports that one was), so its reset
// wins; when none says so, the latest reset is the safe guess.
func resetHint(h Headers, now time.Time, limits []limit) (hint keypool.Hint, spent bool) {
	var latest, latestSpent time.Duration
	var found, foundSpent bool
	for _, l := range limits {
		isSpent := isZero(h.Get(l.remaining))
		spent = spent || isSpent
		d, ok := parseReset(h.Get(l.reset), now, l.format)
		if !ok {
			continue
		}
		found, latest = true, max(latest, d)
		if isSpent {
			foundSpent, latestSpent = true, max(latestSpent, d)
		}
	}
	switch {
	case foundSpent:
		return keypool.Hint{After: latestSpent, Known: true}, spent
	case found:
		return keypool.Hint{After: latest, Known: true}, spent
	}
	return keypool.Hint{}, spent
}

// firstKnown returns the first known hint of hs, or the unknown hint.
func firstKnown(hs ...keypool.Hint) keypool.Hint {
	for _, h := range hs {
		if h.Known {
			return h
		}
	}
	return keypool.Hint{}
}

// isZero reports whether a remaining header says nothing is left ("0", "0.0").
func isZero(v string) bool {
	v = strings.TrimSpace(v)
	if v == "" {
		return false
	}
	if v == "0" {
		return true // the common case, without a float parse
	}
	f, err := strconv.ParseFloat(v, 64)
	return err == nil && f <= 0
}

// readRemaining reads one limit of a successful answer.
func readRemaining(h Headers, now time.Time, l limit) keypool.Remaining {
	v := strings.TrimSpace(h.Get(l.remaining))
	if v == "" {
		return keypool.Remaining{}
	}
	left, ok := parseCount(v)
	if !ok {
		// A few APIs write counts as floats ("99.0"); anything else says nothing.
		f, ferr := strconv.ParseFloat(v, 64)
		if ferr != nil || math.IsNaN(f) || f < 0 || f > math.MaxInt64/2 {
			return keypool.Remaining{}
		}
		left = int64(f)
	}
	r := keypool.Remaining{Left: left, Known: true}
	if d, ok := parseReset(h.Get(l.reset), now, l.format); ok {
		r.Reset = d
	}
	return r
}

// parseCount reads a non-negative decimal integer without strconv, whose errors
// allocate (a float count is then read by the caller's fallback).
func parseCount(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// tightest returns the limit with the least left among the known ones: the one that
// will refuse requests first.
func tightest(rs ...keypool.Remaining) keypool.Remaining {
	var out keypool.Remaining
	for _, r := range rs {
		if r.Known && (!out.Known || r.Left < out.Left) {
			out = r
		}
	}
	return out
}

// parseReset reads a reset header in format f.
func parseReset(v string, now time.Time, f resetFormat) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	switch f {
	case resetRFC3339:
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return 0, false
		}
		return untilTime(t, now), true
	case resetUnixMillis:
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return 0, false
		}
		return untilTime(time.UnixMilli(ms), now), true
	case resetSeconds: // seconds, or a Go-style duration
		if d, ok := parseSeconds(v); ok || !hasUnit(v) {
			return d, ok
		}
		return parseGoDuration(v)
	default: // resetDuration: a Go-style duration, or seconds
		if hasUnit(v) {
			return parseGoDuration(v)
		}
		return parseSeconds(v)
	}
}

// hasUnit reports whether v ends in a letter, as a Go duration does ("6m0s"), unlike
// a number of seconds: the parser that fits is tried first, since a failed strconv or
// time parse allocates its error.
func hasUnit(v string) bool {
	c := v[len(v)-1]
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func parseGoDuration(v string) (time.Duration, bool) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, false
	}
	return min(d, maxHint), true
}

// parseSeconds reads a non-negative, possibly fractional, number of seconds.
func parseSeconds(v string) (time.Duration, bool) {
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(secs) || secs < 0 {
		return 0, false
	}
	return floatDuration(secs, time.Second), true
}

// parseRetryAfterMs reads a retry-after-ms value: milliseconds, possibly fractional.
func parseRetryAfterMs(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	ms, err := strconv.ParseFloat(v, 64)
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
	if d, ok := parseSeconds(v); ok {
		return d, true
	}
	t, err := http.ParseTime(v)
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
