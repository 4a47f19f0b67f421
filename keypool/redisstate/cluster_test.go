package redisstate

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// crossSlotHook fails the test on any CROSSSLOT error a command gets.
type crossSlotHook struct{ t *testing.T }

func (h crossSlotHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h crossSlotHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err != nil && strings.Contains(err.Error(), "CROSSSLOT") {
			h.t.Errorf("CROSSSLOT on %s: %v", cmd.Name(), err)
		}
		return err
	}
}

func (h crossSlotHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if e := cmd.Err(); e != nil && strings.Contains(e.Error(), "CROSSSLOT") {
				h.t.Errorf("CROSSSLOT on %s: %v", cmd.Name(), e)
			}
		}
		return err
	}
}

// Every operation of the State, on pools whose slots live on different
// masters of a real 3-master Cluster, runs without a CROSSSLOT error, and
// each replica stays healthy; then a master is killed under the load of 16
// workers: no request fails, and the pool's state converges on the promoted
// replica within two seconds of it being up.
func TestClusterOperationsAndMasterKill(t *testing.T) {
	cluster := testredis.StartCluster(t)
	t.Cleanup(func() { cluster.AssertNoSecrets(t, testValues...) })
	pools := []string{"openai", "anthropic", "gemini", "azure"}
	opts := func() Options {
		return Options{Addrs: cluster.Addrs(), Cluster: true, Pools: pools,
			testHooks: &testHooks{redisHooks: []redis.Hook{crossSlotHook{t}}}}
	}
	a := newHealthyReplica(t, opts())
	b := newHealthyReplica(t, opts())
	ctx := context.Background()
	masters := map[string]bool{}
	for _, pool := range pools {
		masters[cluster.MasterOf(layout{DefaultPrefix}.meta(pool)).Addr()] = true
		keys := testKeys(pool, 2)
		ref := keys[0].Ref()
		c := keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonRateLimited}
		a.Mark(ctx, pool, keypool.Mark{Scope: keypool.Scope{Ref: ref, Model: "m1"}, Cooldown: c, Span: time.Minute, RequestID: "r1"})
		b.RecordTried(ctx, pool, keys[1].Ref(), "r1")
		if got := b.Tried(ctx, pool, "r1"); len(got) != 2 {
			t.Errorf("%s: tried %v, want both keys", pool, got)
		}
		b.Corroborate(ctx, pool, keypool.Corroboration{Scope: keypool.Scope{Ref: ref}, Class: keypool.ClassRateLimitUnconfirmed,
			RequestID: "r2", Quorum: 1, Window: time.Second, Cooldown: keypool.Cooldown{Until: time.Now().Add(time.Second), Reason: keypool.ReasonRateLimited}, Span: time.Second})
		a.AcquireProbe(ctx, pool, keypool.Scope{Ref: keys[1].Ref()}, keypool.Lease{Holder: "h", TTL: time.Second})
		a.EndProbe(ctx, pool, keypool.Scope{Ref: ref}, "h", keypool.ProbeReleased)
		if err := b.Override(ctx, pool, keys[1].Ref(), keypool.Cooldown{Until: time.Now().Add(time.Hour), Reason: keypool.ReasonDisabled}); err != nil {
			t.Errorf("%s: override: %v", pool, err)
		}
		a.Forget(ctx, pool, "r1")
	}
	if len(masters) < 2 {
		t.Logf("the pools' slots are on %d master(s)", len(masters))
	}
	for name, r := range map[string]*replica{"A": a, "B": b} {
		if !r.Healthy() {
			t.Errorf("%s degraded after the operations: %v", name, r.Ready())
		}
	}

	// A failover costs two round trips on a real Cluster too: the mark, then
	// the retry's read; a healthy first attempt none.
	{
		keys := testKeys("mistral", 3) // a pool without state yet
		poolA, poolB := newPool(t, "mistral", keys, a, nil), newPool(t, "mistral", keys, b, nil)
		a.counter.Reset()
		b.counter.Reset()
		first := keypool.Attempt{RequestID: "rt", Number: 1}
		pk, err := poolA.Pick(ctx, first)
		if err != nil || pk.ID() != "key-1" {
			t.Fatalf("attempt 1 = %v, %v; want key-1", pk.ID(), err)
		}
		if n := a.counter.RoundTrips(); n != 0 {
			t.Errorf("a healthy first attempt made %d round trips (%v), want 0", n, a.counter.Commands())
		}
		poolA.FailKey(ctx, first, pk.Key, keypool.ReasonRateLimited, keypool.Hint{})
		if got, err := poolB.Pick(ctx, keypool.Attempt{RequestID: "rt", Number: 2}); err != nil || got.ID() != "key-2" {
			t.Fatalf("attempt 2 = %v, %v; want key-2", got.ID(), err)
		}
		if n := a.counter.RoundTrips() + b.counter.RoundTrips(); n != 2 {
			t.Errorf("a failover made %d round trips on the Cluster (A %v, B %v), want 2", n, a.counter.Commands(), b.counter.Commands())
		}
	}

	// A master killed under load, its replica having missed the pool's state
	// (asynchronous replication loses the last writes on a failover): no
	// request fails, and the replicas push the state back to the promoted
	// master, both healthy again, within two seconds of it being up.
	keys := testKeys("openai", 6)
	poolA, poolB := newPool(t, "openai", keys, a, nil), newPool(t, "openai", keys, b, nil)
	// key-1 is revoked; key-2 is rate limited for a second at a time, so
	// requests keep marking, reading tried sets and probing.
	serve := func(k keypool.Key) (keypool.Reason, keypool.Hint, bool) {
		switch k.ID() {
		case "key-1":
			return keypool.ReasonUnauthorized, keypool.Hint{}, true
		case "key-2":
			return keypool.ReasonRateLimited, keypool.Hint{After: time.Second, Known: true}, true
		}
		return "", keypool.Hint{}, false
	}
	l := startLoad(ctx, t, 16, []*keypool.Pool{poolA, poolB}, serve)
	l.waitRequests(t, 200)
	master := cluster.MasterOf(layout{DefaultPrefix}.meta("openai"))
	cluster.ReplicaOf(master).LoseData()
	promoted := cluster.KillMaster(master)
	up := time.Now()
	waitFor(t, "the promoted master holds key-1's cooldown and both replicas are healthy", func() bool {
		c, ok := storedCooldown(ctx, promoted.Client(), DefaultPrefix, "openai", keys[0].Ref())
		return ok && c.ActiveAt(time.Now()) && a.Healthy() && b.Healthy()
	})
	t.Logf("under load: state pushed back to the promoted master and replicas healthy %s after it was up (target: 2s)",
		time.Since(up).Round(time.Millisecond))
	l.waitRequests(t, 200)
	l.finish(t)

	// The same without any traffic: the replicas' checks of their pools find
	// out. The pool is one whose master still has a replica.
	var idle string
	var idleMaster *testredis.Server
	for _, pool := range pools[1:] {
		if m := cluster.MasterOf(layout{DefaultPrefix}.meta(pool)); m != promoted && cluster.ReplicaOf(m) != nil {
			idle, idleMaster = pool, m
			break
		}
	}
	if idleMaster == nil {
		t.Fatal("no pool left on a master with a replica")
	}
	disabled := testKeys(idle, 2)[1].Ref() // disabled by B above
	cluster.ReplicaOf(idleMaster).LoseData()
	promoted = cluster.KillMaster(idleMaster)
	up = time.Now()
	waitFor(t, "the promoted master holds the disabled key and both replicas are healthy", func() bool {
		c, ok := storedCooldown(ctx, promoted.Client(), DefaultPrefix, idle, disabled)
		return ok && c.Reason == keypool.ReasonDisabled && a.Healthy() && b.Healthy()
	})
	t.Logf("without traffic: state pushed back and replicas healthy %s after the promoted master was up (target: 2s)",
		time.Since(up).Round(time.Millisecond))
}
