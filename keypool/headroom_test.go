package keypool_test

import (
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func remaining(left int64, reset time.Duration) keypool.Remaining {
	return keypool.Remaining{Left: left, Reset: reset, Known: true}
}

// TestHeadroomTakesASpentKeyOut: a successful answer whose headroom says the limit
// is spent takes the key out until the reset (reason depleted), before any request
// pays a 429 for it.
func TestHeadroomTakesASpentKeyOut(t *testing.T) {
	tests := []struct {
		name      string
		minTokens int64
		headroom  keypool.Headroom
		wantOut   time.Duration // 0: the key stays in
	}{
		{"no headroom headers", 1, keypool.Headroom{}, 0},
		{"requests left", 1, keypool.Headroom{Requests: remaining(3, 5*time.Second)}, 0},
		{"no request left", 1, keypool.Headroom{Requests: remaining(0, 5*time.Second)}, 5 * time.Second},
		{"no request left, no reset given: the depleted default", 1, keypool.Headroom{Requests: remaining(0, 0)}, 10 * time.Second},
		{"a reset below the depleted min is raised", 1, keypool.Headroom{Requests: remaining(0, 20*time.Millisecond)}, 100 * time.Millisecond},
		{"tokens below the floor", 1000, keypool.Headroom{Tokens: remaining(500, 2*time.Second)}, 2 * time.Second},
		{"tokens at the floor", 1000, keypool.Headroom{Tokens: remaining(1000, 2*time.Second)}, 0},
		{"token floor 0: tokens never steer", 0, keypool.Headroom{Tokens: remaining(0, 2*time.Second)}, 0},
		{"both spent: the later reset", 1, keypool.Headroom{Requests: remaining(0, 3*time.Second), Tokens: remaining(0, 7*time.Second)}, 7 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 2, func(o *keypool.PoolOptions) { o.Headroom.MinTokens = tt.minTokens })
			a := attempt("r", 1)
			pk := h.pick(a)
			fin := h.pool.Finish(h.ctx, a, pk, tt.headroom)
			if fin.Depleted != (tt.wantOut > 0) {
				t.Fatalf("Finish = %+v, want depleted %v", fin, tt.wantOut > 0)
			}
			if tt.wantOut == 0 {
				if pk := h.pick(attempt("next", 1)); pk.ID() != "k1" || pk.Steered() {
					t.Errorf("next request got %s steered %v, want k1", pk.ID(), pk.Steered())
				}
				return
			}
			if got := fin.Cooldown.Until.Sub(h.clock.Now()); got != tt.wantOut || fin.Cooldown.Reason != keypool.ReasonDepleted || !fin.Changed {
				t.Errorf("out for %s (%+v), want %s depleted", got, fin, tt.wantOut)
			}
			if pk := h.pick(attempt("next", 1)); pk.ID() != "k2" || !pk.Steered() {
				t.Errorf("next request got %s steered %v, want k2, steered", pk.ID(), pk.Steered())
			}
			h.clock.Advance(tt.wantOut)
			if got := h.serve(attempt("after-reset", 1)); got != "k1" {
				t.Errorf("after the reset: %s, want k1", got)
			}
		})
	}
}

// TestHeadroomWritesOnlyWhenCrossing: the answers in flight when a key's limit ran
// out all say so; one write takes the key out, the others find it out already.
func TestHeadroomWritesOnlyWhenCrossing(t *testing.T) {
	h := newHarness(t, 2)
	inFlight := make([]keypool.Pick, 50)
	for i := range inFlight {
		inFlight[i] = h.pick(attempt("r", 1))
	}
	h.state.take()
	for i, pk := range inFlight {
		// The reset the provider reports moves back a little with each answer.
		h.clock.Advance(time.Millisecond)
		fin := h.pool.Finish(h.ctx, attempt("r", 1), pk, keypool.Headroom{Requests: remaining(0, 5*time.Second-time.Duration(i)*time.Millisecond)})
		if !fin.Depleted || fin.Changed != (i == 0) {
			t.Fatalf("answer %d: %+v, want depleted, written only by the first", i, fin)
		}
	}
	if calls := h.state.take(); calls["Mark"] != 1 || len(calls) != 1 {
		t.Errorf("state calls for 50 answers: %v, want one Mark", calls)
	}
	// A later answer with a later reset extends the cooldown (one more write).
	fin := h.pool.Finish(h.ctx, attempt("r", 1), inFlight[0], keypool.Headroom{Requests: remaining(0, time.Minute)})
	if !fin.Changed || fin.Cooldown.Until.Sub(h.clock.Now()) != time.Minute {
		t.Errorf("a later reset: %+v, want the cooldown extended to 1m", fin)
	}
}

func TestHealthyAnswerWritesNothing(t *testing.T) {
	h := newHarness(t, 2)
	a := attempt("r", 1)
	pk := h.pick(a)
	h.state.take()
	h.pool.Finish(h.ctx, a, pk, keypool.Headroom{Requests: remaining(99, time.Second), Tokens: remaining(5000, time.Second)})
	if calls := h.state.take(); len(calls) != 0 {
		t.Errorf("a healthy first attempt called the state: %v", calls)
	}
	allocs := testing.AllocsPerRun(100, func() {
		h.pool.Finish(h.ctx, a, pk, keypool.Headroom{Requests: remaining(99, time.Second)})
	})
	if allocs != 0 {
		t.Errorf("Finish of a healthy answer allocates %.0f times, want 0", allocs)
	}
}

func TestSteeredOnlyWhenADepletedKeyWasPassedOver(t *testing.T) {
	h := newHarness(t, 3)
	// k1 serves; k2 is out: k1's picks are not steered.
	a := attempt("r", 1)
	pk := h.pick(a)
	h.pool.Finish(h.ctx, a, pk, keypool.Headroom{})
	if _, err := h.pool.Disable(h.ctx, "k1", time.Hour); err != nil {
		t.Fatal(err)
	}
	b := attempt("r2", 1)
	k2 := h.pick(b)
	h.pool.Finish(h.ctx, b, k2, keypool.Headroom{Requests: remaining(0, time.Minute)})
	if err := h.pool.Enable(h.ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if pk := h.pick(attempt("r3", 1)); pk.ID() != "k1" || pk.Steered() {
		t.Errorf("with k2 depleted after k1: %s steered %v, want k1 not steered", pk.ID(), pk.Steered())
	}
	// A disabled key passed over is no steering either.
	if _, err := h.pool.Disable(h.ctx, "k1", time.Hour); err != nil {
		t.Fatal(err)
	}
	if pk := h.pick(attempt("r4", 1)); pk.ID() != "k3" || !pk.Steered() {
		t.Errorf("k1 disabled, k2 depleted: %s steered %v, want k3 steered (past k2)", pk.ID(), pk.Steered())
	}
}
