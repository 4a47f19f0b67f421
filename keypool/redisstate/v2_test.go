package redisstate

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// At the end of a cooldown exactly one request across replicas gets the probe
// lease; its success returns the scope to service on every replica.
func TestProbeLeaseIsExclusiveAcrossReplicas(t *testing.T) {
	srv := startRedis(t)
	clock := newFakeClock()
	a := newHealthyReplica(t, Options{URL: srv.URL(), Clock: clock})
	b := newHealthyReplica(t, Options{URL: srv.URL(), Clock: clock})
	scope := keypool.Scope{Ref: testKeys("openai", 1)[0].Ref()}
	ctx := context.Background()
	a.Mark(ctx, "openai", keypool.Mark{Scope: scope, Span: time.Second,
		Cooldown: keypool.Cooldown{Until: clock.Now().Add(time.Second), Reason: keypool.ReasonRateLimited}})
	if g, _ := b.AcquireProbe(ctx, "openai", scope, keypool.Lease{Holder: "early", TTL: time.Minute}); g != keypool.ProbeCooling {
		t.Fatalf("probe during the cooldown: %s, want cooling", g)
	}
	clock.Advance(time.Second + time.Millisecond)

	var granted atomic.Int32
	var holder atomic.Value
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := []*replica{a, b}[i%2]
			h := fmt.Sprintf("h%02d", i)
			g, e := r.AcquireProbe(ctx, "openai", scope, keypool.Lease{Holder: h, TTL: time.Minute})
			switch g {
			case keypool.ProbeGranted:
				granted.Add(1)
				holder.Store(h)
			case keypool.ProbeBusy:
				if !e.ProbeHeldAt(clock.Now()) {
					t.Errorf("busy without a held lease: %+v", e)
				}
			default:
				t.Errorf("probe %d: %s", i, g)
			}
		}()
	}
	wg.Wait()
	if n := granted.Load(); n != 1 {
		t.Fatalf("%d probes granted across replicas, want exactly 1", n)
	}
	for name, r := range map[string]*replica{"A": a, "B": b} {
		waitFor(t, name+" sees the lease held", func() bool {
			return r.View("openai").Entries[scope].ProbeHeldAt(clock.Now())
		})
	}
	// Another holder cannot end it; the holder's success returns the key.
	a.EndProbe(ctx, "openai", scope, "someone-else", keypool.ProbeSucceeded)
	if _, ok := a.View("openai").Entries[scope]; !ok {
		t.Fatal("a stranger ended the probe")
	}
	b.EndProbe(ctx, "openai", scope, holder.Load().(string), keypool.ProbeSucceeded)
	if e := b.counter.Commands(); len(e) == 0 {
		t.Log("no command counted for EndProbe")
	}
	t.Logf("B's failed calls so far: %v", b.logs.count("redis unreachable"))
	for name, r := range map[string]*replica{"A": a, "B": b} {
		waitFor(t, name+" has the key back", func() bool {
			_, ok := r.View("openai").Entries[scope]
			return !ok
		})
	}
	if g, _ := a.AcquireProbe(ctx, "openai", scope, keypool.Lease{Holder: "late", TTL: time.Minute}); g != keypool.ProbeNotNeeded {
		t.Errorf("probe after the success: %s, want not_needed", g)
	}
}

// Distinct requests seen by different replicas count together; the same
// request twice counts once; the quorum cools the scope.
func TestCorroborationCountsAcrossReplicas(t *testing.T) {
	srv := startRedis(t)
	rs := []*replica{newHealthyReplica(t, Options{URL: srv.URL()}), newHealthyReplica(t, Options{URL: srv.URL()}), newHealthyReplica(t, Options{URL: srv.URL()})}
	scope := keypool.Scope{Ref: testKeys("openai", 1)[0].Ref(), Model: "gpt-4o"}
	ctx := context.Background()
	corroborate := func(r *replica, id string) keypool.MarkResult {
		return r.Corroborate(ctx, "openai", keypool.Corroboration{Scope: scope, Class: keypool.Class("forbidden"), RequestID: id,
			Quorum: 3, Window: 10 * time.Second, Span: time.Minute,
			Cooldown: keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonForbidden}})
	}
	steps := []struct {
		replica  int
		id       string
		agreeing int
		cools    bool
	}{
		{0, "req-1", 1, false},
		{1, "req-1", 1, false}, // the same request on another replica
		{1, "req-2", 2, false},
		{2, "req-3", 3, true},
		{0, "req-4", 1, false}, // the next cooldown needs a quorum of its own
	}
	for _, st := range steps {
		res := corroborate(rs[st.replica], st.id)
		if res.Agreeing != st.agreeing || res.Changed != st.cools {
			t.Errorf("%s on replica %d: agreeing %d, changed %v; want %d, %v", st.id, st.replica, res.Agreeing, res.Changed, st.agreeing, st.cools)
		}
		if len(res.Tried) != 1 || res.Tried[0] != scope.Ref {
			t.Errorf("%s: tried %v, want the key recorded", st.id, res.Tried)
		}
	}
	for i, r := range rs {
		waitFor(t, fmt.Sprintf("replica %d sees the model scope cooling", i), func() bool {
			return r.View("openai").Entries[scope].PhaseAt(time.Now()) == keypool.PhaseCooling
		})
		if _, ok := r.View("openai").Entries[keypool.Scope{Ref: scope.Ref}]; ok {
			t.Errorf("replica %d: the key-wide scope has state; want only the model's", i)
		}
	}
}

// A finished request is forgotten in Redis too; a retry reads the tried set a
// mark on another replica wrote, in one round trip.
func TestTriedSetsAreSharedThenForgotten(t *testing.T) {
	srv := startRedis(t)
	a := newHealthyReplica(t, Options{URL: srv.URL()})
	b := newHealthyReplica(t, Options{URL: srv.URL()})
	keys := testKeys("openai", 2)
	ctx := context.Background()
	c := keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonRateLimited}
	a.MarkFailed(ctx, "openai", keys[0].Ref(), "req-1", c)
	a.RecordTried(ctx, "openai", keys[1].Ref(), "req-1")
	b.counter.Reset()
	if got := b.Tried(ctx, "openai", "req-1"); len(got) != 2 {
		t.Errorf("B reads tried %v, want both keys A recorded", got)
	}
	if n := b.counter.RoundTrips(); n != 1 {
		t.Errorf("a retry's read took %d round trips, want 1", n)
	}
	tried := layout{DefaultPrefix}.tried("openai", "req-1")
	b.Forget(ctx, "openai", "req-1")
	waitFor(t, "the tried set deleted in Redis", func() bool { return srv.Client().Exists(ctx, tried).Val() == 0 })
	if got := a.Tried(ctx, "openai", "req-1"); len(got) != 0 {
		t.Errorf("after Forget on B, A reads %v; want nothing", got)
	}
}

// An enable clears every scope of the key, key-wide and per model, on every
// replica.
func TestEnableClearsEveryScope(t *testing.T) {
	srv := startRedis(t)
	a := newHealthyReplica(t, Options{URL: srv.URL()})
	b := newHealthyReplica(t, Options{URL: srv.URL()})
	ref := testKeys("openai", 1)[0].Ref()
	ctx := context.Background()
	c := keypool.Cooldown{Until: time.Now().Add(time.Hour), Reason: keypool.ReasonRateLimited}
	for _, model := range []string{"", "gpt-4o", "o3"} {
		a.Mark(ctx, "openai", keypool.Mark{Scope: keypool.Scope{Ref: ref, Model: model}, Cooldown: c, Span: time.Hour})
	}
	waitFor(t, "B sees three scopes", func() bool { return b.View("openai") != nil && len(b.View("openai").Entries) == 3 })
	if err := b.Override(ctx, "openai", ref, keypool.Cooldown{}); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*replica{"A": a, "B": b} {
		waitFor(t, name+" has no scope left", func() bool { return len(r.View("openai").Entries) == 0 })
	}
}
