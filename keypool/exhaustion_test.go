package keypool_test

import (
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// TestExhaustionKind: which answer a request gets when no key is left, and the
// Retry-After of a 429.
func TestExhaustionKind(t *testing.T) {
	type state struct {
		class keypool.Class // "" disables the key; "probing" below
		after time.Duration
	}
	const probing = keypool.Class("probing")
	tests := []struct {
		name           string
		keys           []state
		wantKind       keypool.ExhaustionKind
		wantRetryAfter time.Duration
	}{
		{"all rate limited: 429 with the time to the soonest return",
			[]state{{keypool.ClassRateLimited, 40 * time.Second}, {keypool.ClassRateLimited, 12 * time.Second}},
			keypool.ExhaustedRateLimited, 12 * time.Second},
		{"retry-after rounds up to whole seconds",
			[]state{{keypool.ClassRateLimited, 2500 * time.Millisecond}, {keypool.ClassRateLimited, time.Minute}},
			keypool.ExhaustedRateLimited, 3 * time.Second},
		{"retry-after is at least one second",
			[]state{{keypool.ClassRateLimited, time.Second}, {keypool.ClassRateLimited, time.Second}},
			keypool.ExhaustedRateLimited, time.Second},
		{"all out of quota: 429 with the quota's honest wait",
			[]state{{keypool.ClassQuota, 0}, {keypool.ClassQuota, 0}},
			keypool.ExhaustedRateLimited, time.Hour},
		{"all unauthorized: 502",
			[]state{{keypool.ClassUnauthorized, 0}, {keypool.ClassUnauthorized, 0}},
			keypool.ExhaustedAuthFailed, 0},
		{"unauthorized and forbidden: 502",
			[]state{{keypool.ClassUnauthorized, 0}, {keypool.ClassForbidden, 0}},
			keypool.ExhaustedAuthFailed, 0},
		{"unauthorized and rate limited: 429",
			[]state{{keypool.ClassUnauthorized, 0}, {keypool.ClassRateLimited, 20 * time.Second}},
			keypool.ExhaustedRateLimited, 20 * time.Second},
		{"unauthorized and quota: 429",
			[]state{{keypool.ClassUnauthorized, 0}, {keypool.ClassQuota, 2 * time.Hour}},
			keypool.ExhaustedRateLimited, time.Hour},
		{"a forbidden key returning first: retry-after follows it",
			[]state{{keypool.ClassForbidden, 5 * time.Second}, {keypool.ClassRateLimited, time.Minute}},
			keypool.ExhaustedRateLimited, 5 * time.Second},
		{"all disabled: 503",
			[]state{{"", 0}, {"", 0}},
			keypool.ExhaustedUnavailable, 0},
		{"disabled and unauthorized: 502",
			[]state{{"", 0}, {keypool.ClassUnauthorized, 0}},
			keypool.ExhaustedAuthFailed, 0},
		{"disabled and probed by another request: 429 until the probe's lease ends",
			[]state{{"", 0}, {probing, 0}},
			keypool.ExhaustedRateLimited, keypool.DefaultProbeLease},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, len(tt.keys), func(o *keypool.PoolOptions) { o.Failures.Quorum = 1 })
			for i, s := range tt.keys {
				id := h.keys[i].ID()
				switch s.class {
				case "":
					if _, err := h.pool.Disable(h.ctx, id, 0); err != nil {
						t.Fatal(err)
					}
					continue
				case probing:
					// Cooled for 1s, a second ago; another request probes it now.
					if _, err := h.pool.Disable(h.ctx, id, time.Second); err != nil {
						t.Fatal(err)
					}
					h.clock.Advance(time.Second)
					if pk := h.pick(attempt("prober", 1)); !pk.Probing() || pk.ID() != id {
						t.Fatalf("setup: %s probing %v, want a probe of %s", pk.ID(), pk.Probing(), id)
					}
					continue
				}
				a := attempt("setup-"+id, 1)
				pk := h.pick(a)
				if pk.ID() != id {
					t.Fatalf("setup: picked %s, want %s", pk.ID(), id)
				}
				h.fail(a, pk, s.class, s.after)
			}
			ex := h.exhausted(attempt("new", 1))
			if ex.Kind != tt.wantKind || ex.RetryAfter != tt.wantRetryAfter {
				t.Errorf("got %s retry after %s, want %s %s", ex.Kind, ex.RetryAfter, tt.wantKind, tt.wantRetryAfter)
			}
			if ex.Keys != len(tt.keys) || ex.Pool != "p" {
				t.Errorf("pool %q keys %d", ex.Pool, ex.Keys)
			}
		})
	}
}

func TestTriedButUsableKeysGiveARetryableExhaustion(t *testing.T) {
	h := newHarness(t, 1)
	a := attempt("r", 1)
	h.fail(a, h.pick(a), keypool.ClassRateLimited, time.Second)
	h.clock.Advance(2 * time.Second) // the cooldown ended; the request still tried the key
	ex := h.exhausted(attempt("r", 2))
	if ex.Kind != keypool.ExhaustedRateLimited || ex.RetryAfter != time.Second {
		t.Errorf("got %s after %s, want rate_limited after 1s: a new request may use the key now", ex.Kind, ex.RetryAfter)
	}
}
