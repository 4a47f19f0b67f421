package keypool_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// pickCase is a pool shape the pick benchmarks and allocation tests run on.
type pickCase struct {
	name     string
	strategy keypool.Strategy
	keys     int
	cooling  int // the first keys in configuration order cool for an hour
}

func pickCases() []pickCase {
	var out []pickCase
	for _, s := range keypool.Strategies() {
		out = append(out,
			pickCase{string(s) + "/5-keys", s, 5, 0},
			pickCase{string(s) + "/1000-keys-999-cooling", s, 1000, 999},
			pickCase{string(s) + "/1000-keys", s, 1000, 0},
		)
	}
	return out
}

// newPickPool builds the pool of c: weighted pools get weights 1…7, tiered pools
// tiers of 10 keys.
func newPickPool(tb testing.TB, c pickCase) *keypool.Pool {
	tb.Helper()
	// A clock that costs nothing: time.Now costs about 200ns in this sandbox and
	// would hide the pick's own cost.
	fixed := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clock := keypool.ClockFunc(func() time.Time { return fixed })
	state := keypool.NewMemoryState(clock, 0)
	keys := make([]keypool.Key, c.keys)
	var weights, tiers []int
	for i := range keys {
		keys[i] = keypool.NewKey("p", fmt.Sprintf("k%d", i+1), fmt.Sprintf("bench-secret-value-%d-xxxxxxxxxxxxxx", i+1))
		if c.strategy != keypool.StrategyPriority {
			weights = append(weights, 1+i%7)
		}
		if c.strategy == keypool.StrategyTiered {
			tiers = append(tiers, i/10)
		}
	}
	ctx := context.Background()
	until := fixed.Add(time.Hour)
	for _, k := range keys[:c.cooling] {
		state.Mark(ctx, "p", keypool.Mark{Scope: keypool.Scope{Ref: k.Ref()},
			Cooldown: keypool.Cooldown{Until: until, Reason: keypool.ReasonRateLimited}, Span: time.Hour})
	}
	p, err := keypool.NewPool(keypool.PoolOptions{Name: "p", Keys: keys, Strategy: c.strategy,
		Weights: weights, Tiers: tiers, State: state, Clock: clock})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkPick is a healthy first attempt's pick. Compare each strategy's
// 1000-keys-999-cooling with its 5-keys in the same run: the pick must not depend
// on the pool's size.
func BenchmarkPick(b *testing.B) {
	for _, c := range pickCases() {
		b.Run(c.name, func(b *testing.B) {
			p := newPickPool(b, c)
			ctx := context.Background()
			a := keypool.Attempt{RequestID: "r", Number: 1, Model: "gpt-4o"}
			if _, err := p.Pick(ctx, a); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Pick(ctx, a); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPickSizeRatio measures, per strategy, a healthy first attempt's pick on
// a pool of 1,000 keys of which 999 cool, against the same pick on 5 keys,
// alternating batches of the two so that a loaded machine slows both alike; it
// reports the median of the batch ratios as "ratio" (target ≤ 1.2).
func BenchmarkPickSizeRatio(b *testing.B) {
	for _, s := range keypool.Strategies() {
		b.Run(string(s), func(b *testing.B) {
			small := newPickPool(b, pickCase{strategy: s, keys: 5})
			large := newPickPool(b, pickCase{strategy: s, keys: 1000, cooling: 999})
			ctx := context.Background()
			a := keypool.Attempt{RequestID: "r", Number: 1, Model: "gpt-4o"}
			batch := func(p *keypool.Pool) time.Duration {
				start := time.Now()
				for range 200 {
					if _, err := p.Pick(ctx, a); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(start)
			}
			batch(small)
			batch(large)
			var ratios []float64
			b.ReportAllocs()
			for b.Loop() {
				ts, tl := batch(small), batch(large)
				ratios = append(ratios, float64(tl)/float64(ts))
			}
			slices.Sort(ratios)
			b.ReportMetric(ratios[len(ratios)/2], "ratio")
		})
	}
}

func TestHealthyPickAllocatesNothing(t *testing.T) {
	for _, c := range pickCases() {
		t.Run(c.name, func(t *testing.T) {
			p := newPickPool(t, c)
			ctx := context.Background()
			for _, a := range []keypool.Attempt{
				{RequestID: "r", Number: 1},
				{RequestID: "r", Number: 1, Model: "gpt-4o"},
				{Number: 0}, // no request id: nothing to read either
			} {
				pk, err := p.Pick(ctx, a) // builds the pick index
				if err != nil {
					t.Fatal(err)
				}
				allocs := testing.AllocsPerRun(200, func() {
					pk, err = p.Pick(ctx, a)
					if err != nil {
						t.Fatal(err)
					}
					p.Finish(ctx, a, pk, keypool.Headroom{})
				})
				if allocs != 0 {
					t.Errorf("%+v: a healthy pick and finish allocate %.0f times, want 0", a, allocs)
				}
			}
		})
	}
}

// BenchmarkRequest is a whole request through the pool, in memory: healthy (one
// attempt), and failed over (the first attempt's key fails for the request, the
// second serves). Their ratio is the failover path's cost.
func BenchmarkRequest(b *testing.B) {
	for _, keys := range []int{5, 1000} {
		for _, failover := range []bool{false, true} {
			name := fmt.Sprintf("%d-keys/healthy", keys)
			if failover {
				name = fmt.Sprintf("%d-keys/failover", keys)
			}
			b.Run(name, func(b *testing.B) {
				p := newPickPool(b, pickCase{strategy: keypool.StrategyPriority, keys: keys})
				ctx := context.Background()
				ids := make([]string, 1024)
				for i := range ids {
					ids[i] = fmt.Sprintf("6c1f0d1e-request-%04d", i)
				}
				tooLarge := keypool.Failure{Class: keypool.ClassRequestTooLarge, Status: 429}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					id := ids[i%len(ids)]
					i++
					a := keypool.Attempt{RequestID: id, Number: 1}
					pk, _ := p.Pick(ctx, a)
					if failover {
						p.Fail(ctx, a, pk, tooLarge)
						a.Number = 2
						pk, _ = p.Pick(ctx, a)
					}
					p.Finish(ctx, a, pk, keypool.Headroom{})
				}
			})
		}
	}
}
