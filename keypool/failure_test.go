package keypool_test

import (
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// TestDefaultActionOfEachClass is the default failure policy, class by class: what
// a failure of k1 on attempt 1 does to the request and to everyone else.
func TestDefaultActionOfEachClass(t *testing.T) {
	tests := []struct {
		class        keypool.Class
		hint         time.Duration
		wantAction   keypool.Action
		wantRetry    bool
		wantCooldown time.Duration // 0: k1 does not cool
		wantReason   keypool.Reason
	}{
		{keypool.ClassRateLimited, 20 * time.Second, keypool.ActionCool, true, 20 * time.Second, keypool.ReasonRateLimited},
		{keypool.ClassRateLimitUnconfirmed, 0, keypool.ActionCorroborate, true, 0, ""},
		{keypool.ClassQuota, 0, keypool.ActionCool, true, time.Hour, keypool.ReasonQuota},
		{keypool.ClassUnauthorized, 0, keypool.ActionCool, true, time.Hour, keypool.ReasonUnauthorized},
		{keypool.ClassForbidden, 0, keypool.ActionCorroborate, true, 0, ""},
		{keypool.ClassRequestTooLarge, 0, keypool.ActionFailover, true, 0, ""},
		{keypool.ClassOverloaded, 0, keypool.ActionPass, false, 0, ""},
	}
	for _, tt := range tests {
		t.Run(string(tt.class), func(t *testing.T) {
			h := newHarness(t, 3)
			a := attempt("r", 1)
			out := h.fail(a, h.pick(a), tt.class, tt.hint)
			if out.Action != tt.wantAction || out.Retry != tt.wantRetry || out.Class != tt.class {
				t.Errorf("outcome %+v, want action %s retry %v", out, tt.wantAction, tt.wantRetry)
			}
			cooled := !out.Cooldown.Until.IsZero()
			if got := out.Cooldown.Until.Sub(h.clock.Now()); cooled != (tt.wantCooldown > 0) || (cooled && got != tt.wantCooldown) {
				t.Errorf("cooldown %s (%v), want %s", got, out.Cooldown, tt.wantCooldown)
			}
			if out.Cooldown.Reason != tt.wantReason || out.Changed != cooled {
				t.Errorf("reason %q changed %v, want %q %v", out.Cooldown.Reason, out.Changed, tt.wantReason, cooled)
			}
			// Another request gets k1 unless it cooled.
			wantOther := "k1"
			if cooled {
				wantOther = "k2"
			}
			if got := h.serve(attempt("other", 1)); got != wantOther {
				t.Errorf("another request got %s, want %s", got, wantOther)
			}
			// This request's retry (Envoy sends one only on the marker) never gets k1.
			if tt.wantRetry {
				if got := h.serve(attempt("r", 2)); got == "k1" {
					t.Error("the request's retry got k1 again")
				}
			}
		})
	}
}

func TestPassRecordsNothing(t *testing.T) {
	h := newHarness(t, 2)
	a := attempt("r", 1)
	pk := h.pick(a)
	h.state.take()
	h.fail(a, pk, keypool.ClassOverloaded, 0)
	if calls := h.state.take(); len(calls) != 0 {
		t.Errorf("a passed failure called the state: %v", calls)
	}
}

func TestPolicyOverridesAnAction(t *testing.T) {
	h := newHarness(t, 2, func(o *keypool.PoolOptions) {
		o.Failures = keypool.FailurePolicy{Actions: map[keypool.Class]keypool.Action{
			keypool.ClassForbidden:       keypool.ActionCool,
			keypool.ClassRequestTooLarge: keypool.ActionPass,
		}}
	})
	a := attempt("r", 1)
	if out := h.fail(a, h.pick(a), keypool.ClassForbidden, 0); out.Action != keypool.ActionCool ||
		out.Cooldown.Until.Sub(h.clock.Now()) != 30*time.Second {
		t.Errorf("forbidden overridden to cool: %+v, want cooled for forbidden's 30s", out)
	}
	b := attempt("r2", 1)
	if out := h.fail(b, h.pick(b), keypool.ClassRequestTooLarge, 0); out.Action != keypool.ActionPass || out.Retry {
		t.Errorf("request_too_large overridden to pass: %+v", out)
	}
	// Classes left out keep their default.
	c := attempt("r3", 1)
	if out := h.fail(c, h.pick(c), keypool.ClassRateLimitUnconfirmed, 0); out.Action != keypool.ActionCorroborate {
		t.Errorf("unconfirmed 429 kept its default: %+v", out)
	}
}

func TestAnUnknownClassFailsOverWithoutCooling(t *testing.T) {
	h := newHarness(t, 2)
	a := attempt("r", 1)
	out := h.fail(a, h.pick(a), "teapot", 0)
	if out.Action != keypool.ActionFailover || !out.Retry || !out.Cooldown.Until.IsZero() {
		t.Errorf("outcome %+v, want failover without a cooldown", out)
	}
}

// TestRetryWhenNothingIsLeft: a failure that cooled nothing passes the provider's
// answer when the request has no key left; one that cooled the scope retries into
// the exhaustion answer.
func TestRetryWhenNothingIsLeft(t *testing.T) {
	tests := []struct {
		name      string
		keys      int
		requestID string
		class     keypool.Class
		wantRetry bool
	}{
		{"one key, 403 (corroborate): the provider's 403", 1, "r", keypool.ClassForbidden, false},
		{"one key, too large (failover): the provider's answer", 1, "r", keypool.ClassRequestTooLarge, false},
		{"one key, rate limited (cool): our 429 with Retry-After", 1, "r", keypool.ClassRateLimited, true},
		{"one key, unauthorized (cool): our 502", 1, "r", keypool.ClassUnauthorized, true},
		{"two keys, too large: the next key", 2, "r", keypool.ClassRequestTooLarge, true},
		{"no request id, too large: a retry would get the same key", 2, "", keypool.ClassRequestTooLarge, false},
		{"no request id, rate limited: the cooldown steers the retry", 2, "", keypool.ClassRateLimited, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.keys)
			a := attempt(tt.requestID, 1)
			pk := h.pick(a)
			h.state.take()
			out := h.fail(a, pk, tt.class, 0)
			if out.Retry != tt.wantRetry {
				t.Fatalf("Retry = %v, want %v (%+v)", out.Retry, tt.wantRetry, out)
			}
			forgot := h.state.take()["Forget"] > 0
			if wantForget := !tt.wantRetry && tt.requestID != ""; forgot != wantForget {
				t.Errorf("Forget called %v, want %v: the provider's answer ends the request", forgot, wantForget)
			}
			if tt.wantRetry && tt.keys == 1 {
				ex := h.exhausted(attempt(tt.requestID, 2))
				want := keypool.ExhaustedRateLimited
				if tt.class == keypool.ClassUnauthorized {
					want = keypool.ExhaustedAuthFailed
				}
				if ex.Kind != want {
					t.Errorf("the retry's exhaustion is %s, want %s", ex.Kind, want)
				}
			}
		})
	}
}

// TestCorroborateCoolsWhenDistinctRequestsAgree: a class whose action is
// corroborate cools a key only when the quorum of distinct requests saw it within
// the window.
func TestCorroborateCoolsWhenDistinctRequestsAgree(t *testing.T) {
	type failure struct {
		request string
		class   keypool.Class
		after   time.Duration // clock advance before the failure
	}
	f := func(req string, after time.Duration) failure { return failure{req, keypool.ClassForbidden, after} }
	tests := []struct {
		name     string
		quorum   int
		failures []failure
		wantCool bool
		wantLast int // Agreeing of the last failure
	}{
		{"three distinct requests within the window", 0, []failure{f("a", 0), f("b", time.Second), f("c", time.Second)}, true, 3},
		{"two are not enough", 0, []failure{f("a", 0), f("b", time.Second)}, false, 2},
		{"one request three times counts once", 0, []failure{f("a", 0), f("a", 0), f("a", 0)}, false, 1},
		{"spread over more than the window", 0, []failure{f("a", 0), f("b", 6*time.Second), f("c", 6*time.Second)}, false, 2},
		{"each class counts on its own", 0, []failure{f("a", 0), f("b", 0), {"c", keypool.ClassRateLimitUnconfirmed, 0}}, false, 1},
		{"a quorum of one cools at once", 1, []failure{f("a", 0)}, true, 1},
		{"requests without an id each count", 0, []failure{f("", 0), f("", 0), f("", 0)}, true, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 2, func(o *keypool.PoolOptions) { o.Failures.Quorum = tt.quorum })
			var out keypool.Outcome
			for i, fl := range tt.failures {
				h.clock.Advance(fl.after)
				a := attempt(fl.request, 1)
				pk := h.pick(a)
				if pk.ID() != "k1" {
					t.Fatalf("failure %d: picked %s before the quorum cooled k1", i, pk.ID())
				}
				out = h.fail(a, pk, fl.class, 0)
				// Without a request id a retry could not be told from a new
				// request: nothing to fail over to until the key cools.
				if out.Action != keypool.ActionCorroborate || out.Retry != (fl.request != "" || !out.Cooldown.Until.IsZero()) {
					t.Fatalf("failure %d: %+v", i, out)
				}
			}
			cooled := !out.Cooldown.Until.IsZero()
			if cooled != tt.wantCool || out.Changed != tt.wantCool || out.Agreeing != tt.wantLast {
				t.Errorf("last outcome %+v: cooled %v agreeing %d, want %v %d", out, cooled, out.Agreeing, tt.wantCool, tt.wantLast)
			}
			if tt.wantCool && out.Cooldown.Until.Sub(h.clock.Now()) != 30*time.Second {
				t.Errorf("cooled until %s, want forbidden's default 30s", out.Cooldown.Until)
			}
		})
	}
}

func TestCorroborationStartsOverAfterACooldown(t *testing.T) {
	h := newHarness(t, 2)
	for _, id := range []string{"a", "b", "c"} {
		a := attempt(id, 1)
		h.fail(a, h.pick(a), keypool.ClassForbidden, 0)
	}
	h.clock.Advance(31 * time.Second) // k1's cooldown ended; the next request probes it
	a := attempt("d", 1)
	pk := h.pick(a)
	h.pool.Finish(h.ctx, a, pk, keypool.Headroom{})
	e := attempt("e", 1)
	if out := h.fail(e, h.pick(e), keypool.ClassForbidden, 0); out.Agreeing != 1 || !out.Cooldown.Until.IsZero() {
		t.Errorf("the first 403 after the cooldown: %+v, want a fresh count that cools nothing", out)
	}
}
