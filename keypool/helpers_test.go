package keypool_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func newFakeClock() *fakeclock.Clock {
	return fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
}

// testKeys returns n keys of pool "p" with obviously fake values.
func testKeys(n int) []keypool.Key {
	keys := make([]keypool.Key, n)
	for i := range keys {
		keys[i] = keypool.NewKey("p", fmt.Sprintf("k%d", i+1), fmt.Sprintf("test-secret-value-%d-xxxxxxxxxxxx", i+1))
	}
	return keys
}

// harness is a pool of keys k1…kn on a fake clock, with its state counted.
type harness struct {
	t     testing.TB
	clock *fakeclock.Clock
	state *countingState
	pool  *keypool.Pool
	keys  []keypool.Key
	ctx   context.Context
}

// newHarness builds the pool; opts may change its options before NewPool.
func newHarness(t testing.TB, n int, opts ...func(*keypool.PoolOptions)) *harness {
	t.Helper()
	clock := newFakeClock()
	h := &harness{t: t, clock: clock, keys: testKeys(n), ctx: context.Background()}
	h.state = &countingState{State: keypool.NewMemoryState(clock, 0)}
	o := keypool.PoolOptions{Name: "p", Keys: h.keys, State: h.state, Clock: clock,
		Rand: lockedRand(rand.New(rand.NewPCG(1, 2)))}
	for _, f := range opts {
		f(&o)
	}
	p, err := keypool.NewPool(o)
	if err != nil {
		t.Fatal(err)
	}
	h.pool = p
	return h
}

// lockedRand makes a seeded generator safe for the pool's concurrent use, so tests
// are reproducible.
func lockedRand(r *rand.Rand) func() uint64 {
	var mu sync.Mutex
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64()
	}
}

func attempt(id string, n int) keypool.Attempt { return keypool.Attempt{RequestID: id, Number: n} }

func (h *harness) pick(a keypool.Attempt) keypool.Pick {
	h.t.Helper()
	pk, err := h.pool.Pick(h.ctx, a)
	if err != nil {
		h.t.Fatalf("Pick(%+v): %v", a, err)
	}
	return pk
}

// pickID picks for a and returns the key's id, or the exhaustion kind in brackets.
func (h *harness) pickID(a keypool.Attempt) string {
	h.t.Helper()
	pk, err := h.pool.Pick(h.ctx, a)
	var ex *keypool.ExhaustedError
	switch {
	case errors.As(err, &ex):
		return "[" + ex.Kind.String() + "]"
	case err != nil:
		h.t.Fatalf("Pick(%+v): %v", a, err)
	}
	return pk.ID()
}

func (h *harness) exhausted(a keypool.Attempt) *keypool.ExhaustedError {
	h.t.Helper()
	pk, err := h.pool.Pick(h.ctx, a)
	var ex *keypool.ExhaustedError
	if !errors.As(err, &ex) || !errors.Is(err, keypool.ErrExhausted) {
		h.t.Fatalf("Pick(%+v) = %s, %v; want exhaustion", a, pk.ID(), err)
	}
	return ex
}

func (h *harness) fail(a keypool.Attempt, pk keypool.Pick, class keypool.Class, hint time.Duration) keypool.Outcome {
	h.t.Helper()
	return h.pool.Fail(h.ctx, a, pk, keypool.Failure{Class: class, Hint: keypool.Hint{After: hint, Known: hint > 0}, Status: 429})
}

// serve picks for a and finishes the attempt with a healthy answer.
func (h *harness) serve(a keypool.Attempt) string {
	h.t.Helper()
	pk := h.pick(a)
	h.pool.Finish(h.ctx, a, pk, keypool.Headroom{})
	return pk.ID()
}

// status is the key's key-wide status.
func (h *harness) status(id string) keypool.KeyStatus {
	h.t.Helper()
	for _, s := range h.pool.Status() {
		if s.Key.ID() == id {
			return s
		}
	}
	h.t.Fatalf("no key %s", id)
	return keypool.KeyStatus{}
}

// countingState counts the calls of each State method other than View.
type countingState struct {
	keypool.State
	mu    sync.Mutex
	calls map[string]int
}

func (c *countingState) count(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[name]++
}

// writes returns the calls counted so far and resets them.
func (c *countingState) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = nil
	if out == nil {
		out = map[string]int{}
	}
	return out
}

func (c *countingState) Tried(ctx context.Context, pool, id string) []string {
	c.count("Tried")
	return c.State.Tried(ctx, pool, id)
}

func (c *countingState) Mark(ctx context.Context, pool string, m keypool.Mark) keypool.MarkResult {
	c.count("Mark")
	return c.State.Mark(ctx, pool, m)
}

func (c *countingState) RecordTried(ctx context.Context, pool, ref, id string) []string {
	c.count("RecordTried")
	return c.State.RecordTried(ctx, pool, ref, id)
}

func (c *countingState) Corroborate(ctx context.Context, pool string, cr keypool.Corroboration) keypool.MarkResult {
	c.count("Corroborate")
	return c.State.Corroborate(ctx, pool, cr)
}

func (c *countingState) AcquireProbe(ctx context.Context, pool string, s keypool.Scope, l keypool.Lease) (keypool.ProbeGrant, keypool.Entry) {
	c.count("AcquireProbe")
	return c.State.AcquireProbe(ctx, pool, s, l)
}

func (c *countingState) EndProbe(ctx context.Context, pool string, s keypool.Scope, holder string, end keypool.ProbeEnd) {
	c.count("EndProbe")
	c.State.EndProbe(ctx, pool, s, holder, end)
}

func (c *countingState) Forget(ctx context.Context, pool, id string) {
	c.count("Forget")
	c.State.Forget(ctx, pool, id)
}

func (c *countingState) Override(ctx context.Context, pool, ref string, cd keypool.Cooldown) error {
	c.count("Override")
	return c.State.Override(ctx, pool, ref, cd)
}
