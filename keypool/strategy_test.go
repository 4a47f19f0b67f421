package keypool_test

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func TestPriorityServesTheFirstUsableKey(t *testing.T) {
	h := newHarness(t, 3)
	for range 5 {
		if got := h.serve(attempt("r", 1)); got != "k1" {
			t.Fatalf("picked %s, want the first key while it is healthy", got)
		}
	}
}

// shares picks n times for fresh requests and returns each key's share.
func shares(h *harness, n int) map[string]float64 {
	counts := map[string]int{}
	for i := range n {
		counts[h.serve(attempt(fmt.Sprint("s", i), 1))]++
	}
	out := map[string]float64{}
	for id, c := range counts {
		out[id] = float64(c) / float64(n)
	}
	return out
}

func checkShares(t *testing.T, got, want map[string]float64) {
	t.Helper()
	for id, w := range want {
		if math.Abs(got[id]-w) > 0.02 {
			t.Errorf("%s served %.3f of the picks, want %.3f ± 0.02", id, got[id], w)
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok && g > 0 {
			t.Errorf("%s served %.3f of the picks, want none", id, g)
		}
	}
}

// TestWeightedSharesFollowTheWeights: over 10,000 picks each key's share is within
// 2% of its weight's; a cooling key is skipped and the others share its part.
func TestWeightedSharesFollowTheWeights(t *testing.T) {
	h := newHarness(t, 4, func(o *keypool.PoolOptions) {
		o.Strategy, o.Weights = keypool.StrategyWeighted, []int{1, 2, 3, 4}
	})
	checkShares(t, shares(h, 10_000), map[string]float64{"k1": 0.1, "k2": 0.2, "k3": 0.3, "k4": 0.4})

	a := attempt("cool-k4", 1)
	for pk := h.pick(a); ; pk = h.pick(a) {
		if pk.ID() == "k4" {
			h.fail(a, pk, keypool.ClassRateLimited, time.Hour)
			break
		}
		h.pool.Release(h.ctx, a, pk)
	}
	checkShares(t, shares(h, 10_000), map[string]float64{"k1": 1.0 / 6, "k2": 2.0 / 6, "k3": 3.0 / 6})
}

func TestEqualWeightsShareEvenly(t *testing.T) {
	h := newHarness(t, 5, func(o *keypool.PoolOptions) { o.Strategy = keypool.StrategyWeighted })
	checkShares(t, shares(h, 10_000), map[string]float64{"k1": 0.2, "k2": 0.2, "k3": 0.2, "k4": 0.2, "k5": 0.2})
}

// TestTiersAreExhaustedInOrder: the lowest tier with a usable key serves, by weight
// inside the tier; the next tier only when the whole tier is out.
func TestTiersAreExhaustedInOrder(t *testing.T) {
	h := newHarness(t, 4, func(o *keypool.PoolOptions) {
		o.Strategy, o.Tiers, o.Weights = keypool.StrategyTiered, []int{5, 5, 9, 9}, []int{1, 3, 1, 1}
	})
	checkShares(t, shares(h, 10_000), map[string]float64{"k1": 0.25, "k2": 0.75})

	for _, id := range []string{"k1", "k2"} {
		if _, err := h.pool.Disable(h.ctx, id, 0); err != nil {
			t.Fatal(err)
		}
	}
	checkShares(t, shares(h, 10_000), map[string]float64{"k3": 0.5, "k4": 0.5})
}

func TestARequestWalksTiersInOrder(t *testing.T) {
	h := newHarness(t, 4, func(o *keypool.PoolOptions) {
		o.Strategy, o.Tiers = keypool.StrategyTiered, []int{0, 0, 1, 1}
	})
	tier := map[string]int{"k1": 0, "k2": 0, "k3": 1, "k4": 1}
	last := 0
	for n := 1; n <= 4; n++ {
		a := attempt("r", n)
		pk := h.pick(a)
		if tier[pk.ID()] < last {
			t.Fatalf("attempt %d went back to tier %d", n, tier[pk.ID()])
		}
		if n <= 2 && tier[pk.ID()] != 0 {
			t.Fatalf("attempt %d got %s of tier 1 while tier 0 had an untried key", n, pk.ID())
		}
		last = tier[pk.ID()]
		h.fail(a, pk, keypool.ClassRequestTooLarge, 0)
	}
}

// TestEachKeyAtMostOncePerRequest: whatever the strategy, a request that fails over
// on every attempt tries each key exactly once, then gets the exhaustion answer.
func TestEachKeyAtMostOncePerRequest(t *testing.T) {
	for _, tt := range []struct {
		strategy keypool.Strategy
		weights  []int
		tiers    []int
	}{
		{keypool.StrategyPriority, nil, nil},
		{keypool.StrategyWeighted, []int{1, 100, 1, 5, 1000, 1}, nil},
		{keypool.StrategyTiered, []int{1, 100, 1, 5, 1000, 1}, []int{2, 0, 1, 0, 2, 1}},
	} {
		t.Run(string(tt.strategy), func(t *testing.T) {
			for round := range 50 {
				h := newHarness(t, 6, func(o *keypool.PoolOptions) {
					o.Strategy, o.Weights, o.Tiers = tt.strategy, tt.weights, tt.tiers
				})
				id := fmt.Sprint("r", round)
				seen := map[string]bool{}
				for n := 1; n <= 6; n++ {
					a := attempt(id, n)
					pk := h.pick(a)
					if seen[pk.ID()] {
						t.Fatalf("round %d attempt %d reused %s", round, n, pk.ID())
					}
					seen[pk.ID()] = true
					// A short cooldown that ends at once: only the tried set keeps
					// the request off the key.
					h.fail(a, pk, keypool.ClassRateLimited, time.Second)
					h.clock.Advance(2 * time.Second)
				}
				if ex := h.exhausted(attempt(id, 7)); ex.Kind != keypool.ExhaustedRateLimited {
					t.Fatalf("round %d: %s, want rate_limited", round, ex.Kind)
				}
			}
		})
	}
}
