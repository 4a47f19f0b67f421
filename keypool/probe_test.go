package keypool_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// coolK1 cools k1 for d (rate limited) and moves the clock to the end of it.
func coolK1(h *harness, d time.Duration) {
	h.t.Helper()
	a := attempt("cool", 1)
	pk := h.pick(a)
	if pk.ID() != "k1" {
		h.t.Fatalf("picked %s, want k1", pk.ID())
	}
	h.fail(a, pk, keypool.ClassRateLimited, d)
	h.clock.Advance(d)
}

func TestOneProbeAtATimeAfterACooldown(t *testing.T) {
	h := newHarness(t, 2)
	coolK1(h, 30*time.Second)

	probe := attempt("probe", 1)
	pk := h.pick(probe)
	if pk.ID() != "k1" || !pk.Probing() {
		t.Fatalf("first pick after the cooldown: %s probing %v, want a probe of k1", pk.ID(), pk.Probing())
	}
	if st := h.status("k1"); st.Phase != keypool.PhaseProbing || st.ProbeUntil.IsZero() || st.Reason != keypool.ReasonRateLimited {
		t.Errorf("status while probing: %+v", st.ScopeStatus)
	}
	for i := range 5 {
		if got := h.serve(attempt("other", 1)); got != "k2" {
			t.Fatalf("request %d during the probe got %s, want k2", i, got)
		}
	}
	if fin := h.pool.Finish(h.ctx, probe, pk, keypool.Headroom{}); !fin.ProbeSucceeded {
		t.Fatalf("Finish of the probe: %+v", fin)
	}
	if st := h.status("k1"); st.Phase != keypool.PhaseAvailable {
		t.Errorf("status after the probe succeeded: %+v", st.ScopeStatus)
	}
	if pk := h.pick(attempt("after", 1)); pk.ID() != "k1" || pk.Probing() {
		t.Errorf("after the probe: %s probing %v, want k1 in service", pk.ID(), pk.Probing())
	}
}

func TestExactlyOneOfManyConcurrentRequestsProbes(t *testing.T) {
	h := newHarness(t, 3)
	coolK1(h, 30*time.Second)
	var probes, onK1 atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 32 {
		wg.Go(func() {
			<-start
			pk := h.pick(attempt("c", 1))
			if pk.Probing() {
				probes.Add(1)
			}
			if pk.ID() == "k1" {
				onK1.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if probes.Load() != 1 || onK1.Load() != 1 {
		t.Errorf("%d probes, %d requests on k1; want exactly one of each", probes.Load(), onK1.Load())
	}
}

// TestFailedProbeDoublesTheCooldown: each failed probe cools the key for twice its
// last span, capped at the reason's max and never below the provider's hint; a
// success forgets the doubling.
func TestFailedProbeDoublesTheCooldown(t *testing.T) {
	h := newHarness(t, 2, func(o *keypool.PoolOptions) {
		o.Policy = keypool.Policy{keypool.ReasonRateLimited: {Default: 30 * time.Second, Min: time.Second, Max: 100 * time.Second}}
	})
	coolK1(h, 30*time.Second)
	steps := []struct {
		hint time.Duration
		want time.Duration
	}{
		{0, 60 * time.Second},  // 2 × 30s
		{0, 100 * time.Second}, // 2 × 60s, capped at max
		{0, 100 * time.Second}, // stays at the cap
	}
	for i, s := range steps {
		a := attempt("probe", 1)
		pk := h.pick(a)
		if !pk.Probing() || pk.ID() != "k1" {
			t.Fatalf("step %d: %s probing %v, want a probe of k1", i, pk.ID(), pk.Probing())
		}
		out := h.fail(a, pk, keypool.ClassRateLimited, s.hint)
		if !out.ProbeFailed || out.Action != keypool.ActionCool || out.Cooldown.Until.Sub(h.clock.Now()) != s.want {
			t.Fatalf("step %d: %+v, want a failed probe cooling %s", i, out, s.want)
		}
		h.clock.Advance(s.want)
	}
	// A probe that succeeds resets the doubling: the next failure cools for the
	// plain default again.
	a := attempt("probe-ok", 1)
	pk := h.pick(a)
	h.pool.Finish(h.ctx, a, pk, keypool.Headroom{})
	b := attempt("later", 1)
	if out := h.fail(b, h.pick(b), keypool.ClassRateLimited, 0); out.Cooldown.Until.Sub(h.clock.Now()) != 30*time.Second {
		t.Errorf("after a successful probe: cooled %s, want 30s", out.Cooldown.Until.Sub(h.clock.Now()))
	}
}

func TestFailedProbeHonoursALongerHint(t *testing.T) {
	h := newHarness(t, 2)
	coolK1(h, 10*time.Second)
	a := attempt("probe", 1)
	pk := h.pick(a)
	if out := h.fail(a, pk, keypool.ClassRateLimited, 5*time.Minute); out.Cooldown.Until.Sub(h.clock.Now()) != 5*time.Minute {
		t.Errorf("cooled %s, want the provider's 5m (longer than 2 × 10s)", out.Cooldown.Until.Sub(h.clock.Now()))
	}
}

// TestProbeWithoutAVerdict: a probe whose stream ended without an answer, whose
// failure was the request's own, or whose lease ran out lets the next request probe.
func TestProbeWithoutAVerdict(t *testing.T) {
	tests := []struct {
		name string
		end  func(h *harness, a keypool.Attempt, pk keypool.Pick)
	}{
		{"released", func(h *harness, a keypool.Attempt, pk keypool.Pick) { h.pool.Release(h.ctx, a, pk) }},
		{"the request's own failure", func(h *harness, a keypool.Attempt, pk keypool.Pick) {
			if out := h.fail(a, pk, keypool.ClassRequestTooLarge, 0); out.ProbeFailed || !out.Cooldown.Until.IsZero() {
				h.t.Errorf("too large during a probe: %+v", out)
			}
		}},
		{"an overloaded provider", func(h *harness, a keypool.Attempt, pk keypool.Pick) { h.fail(a, pk, keypool.ClassOverloaded, 0) }},
		{"lost: the lease ran out", func(h *harness, _ keypool.Attempt, _ keypool.Pick) { h.clock.Advance(keypool.DefaultProbeLease) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 2)
			coolK1(h, 30*time.Second)
			a := attempt("probe-1", 1)
			pk := h.pick(a)
			if !pk.Probing() {
				t.Fatal("no probe")
			}
			if h.pickID(attempt("waiting", 1)) != "k2" {
				t.Fatal("a second request got k1 during the probe")
			}
			tt.end(h, a, pk)
			next := h.pick(attempt("probe-2", 1))
			if next.ID() != "k1" || !next.Probing() {
				t.Errorf("the next request: %s probing %v, want the next probe of k1", next.ID(), next.Probing())
			}
		})
	}
}

func TestProbingKeyInTheExhaustionAnswer(t *testing.T) {
	h := newHarness(t, 1)
	coolK1(h, 30*time.Second)
	h.pick(attempt("probe", 1))
	h.clock.Advance(10 * time.Second)
	ex := h.exhausted(attempt("waiting", 1))
	if ex.Kind != keypool.ExhaustedRateLimited || ex.RetryAfter != keypool.DefaultProbeLease-10*time.Second {
		t.Errorf("exhaustion during the probe: %s retry after %s, want rate_limited, the lease's remaining 20s", ex.Kind, ex.RetryAfter)
	}
}

func TestProbeRetiresWithoutTraffic(t *testing.T) {
	h := newHarness(t, 2)
	coolK1(h, 30*time.Second)
	h.clock.Advance(keypool.MinProbeWindow)
	if pk := h.pick(attempt("late", 1)); pk.ID() != "k1" || pk.Probing() {
		t.Errorf("a minute after the cooldown ended unprobed: %s probing %v, want k1 in service", pk.ID(), pk.Probing())
	}
}

// TestRetriesLeaveProbesToFirstAttempts: a retry takes a key known to serve when
// there is one (a probe would be a second round trip in its ext_proc message), and
// probes only when nothing else is left.
func TestRetriesLeaveProbesToFirstAttempts(t *testing.T) {
	for _, tt := range []struct {
		keys      int
		class     keypool.Class // attempt 1's failure on k2
		wantRetry string
		wantProbe bool
	}{
		{3, keypool.ClassRequestTooLarge, "k3", false},
		{2, keypool.ClassRateLimited, "k1", true}, // k2 cools: only k1's probe is left
	} {
		h := newHarness(t, tt.keys)
		a := attempt("cool", 1)
		h.fail(a, h.pick(a), keypool.ClassRateLimited, 5*time.Second)
		first := attempt("r", 1)
		if pk := h.pick(first); pk.ID() != "k2" {
			t.Fatalf("%d keys: attempt 1 got %s, want k2", tt.keys, pk.ID())
		} else {
			h.fail(first, pk, tt.class, time.Hour)
		}
		h.clock.Advance(5 * time.Second) // k1 waits for its probe; r's tried set (10s) holds
		retry := h.pick(attempt("r", 2))
		if retry.ID() != tt.wantRetry || retry.Probing() != tt.wantProbe {
			t.Errorf("%d keys: the retry got %s probing %v, want %s probing %v",
				tt.keys, retry.ID(), retry.Probing(), tt.wantRetry, tt.wantProbe)
		}
		if !tt.wantProbe {
			if pk := h.pick(attempt("new", 1)); pk.ID() != "k1" || !pk.Probing() {
				t.Errorf("%d keys: a first attempt got %s probing %v, want the probe of k1", tt.keys, pk.ID(), pk.Probing())
			}
		}
	}
}
