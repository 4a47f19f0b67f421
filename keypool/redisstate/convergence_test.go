package redisstate

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// A Redis that lost its data while every connection stayed up (FLUSHALL here;
// a failover to a replica that missed writes, seen from a replica whose
// subscription lives on another node) gets the state back from replicas that
// have no traffic at all: each checks its pools' seq once per health check
// interval and resynchronises when Redis holds less than it saw.
func TestIdleReplicasPushBackWhatRedisLost(t *testing.T) {
	srv := startRedis(t)
	// upkeep counts every call of a replica, its background work included.
	upkeep := map[string]*testredis.Counter{"A": {}, "B": {}}
	a := newHealthyReplica(t, Options{URL: srv.URL(), testHooks: &testHooks{redisHooks: []redis.Hook{upkeep["A"]}}})
	b := newHealthyReplica(t, Options{URL: srv.URL(), testHooks: &testHooks{redisHooks: []redis.Hook{upkeep["B"]}}})
	ctx := context.Background()
	ref := testKeys("openai", 1)[0].Ref()
	c := keypool.Cooldown{Until: time.Now().Add(time.Hour), Reason: keypool.ReasonUnauthorized}
	a.MarkFailed(ctx, "openai", ref, "", c)
	waitFor(t, "B sees the mark", func() bool { return sameCooldown(b.Cooldown("openai", ref), c) })

	if err := srv.Client().FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	waitFor(t, "Redis holds the mark again", func() bool {
		stc, ok := storedCooldown(ctx, srv.Client(), DefaultPrefix, "openai", ref)
		return ok && sameCooldown(stc, c)
	})
	t.Logf("state back in Redis %s after it was lost (health check interval 200ms)", time.Since(lost).Round(time.Millisecond))
	for name, r := range map[string]*replica{"A": a, "B": b} {
		if !sameCooldown(r.Cooldown("openai", ref), c) || !r.Healthy() {
			t.Errorf("%s: cooldown %+v, ready %v; want the mark kept and healthy", name, r.Cooldown("openai", ref), r.Ready())
		}
		if n := r.logs.count("redis unreachable"); n != 0 {
			t.Errorf("%s logged %d outages: Redis never was unreachable", name, n)
		}
	}
	// Once converged, the checks find nothing to do: no resync loop. (A check
	// and the resync it asks for run one after the other: after two checks
	// that began once Redis had the state back, any resync they asked for is
	// done.)
	for name, r := range map[string]*replica{"A": a, "B": b} {
		checks := func() int { return countOf(upkeep[name].Commands(), "hget") }
		upkeep[name].Reset()
		waitFor(t, name+" checked its pool twice", func() bool { return checks() >= 2 })
		before := r.counterMetric(t, "envoy_keypool_redis_resyncs_total")
		upkeep[name].Reset()
		waitFor(t, name+" checked its pool three more times", func() bool { return checks() >= 3 })
		if n := r.counterMetric(t, "envoy_keypool_redis_resyncs_total") - before; n > 0 {
			t.Errorf("%s resynchronised %v times in three checks after converging, want 0", name, n)
		}
	}
}

// countOf is how many times s is in list.
func countOf(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}
