package redisstate

import (
	"context"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// The Sentinels' master is killed under the load of 16 workers, its replicas
// having missed the pool's state (asynchronous replication loses the last
// writes on a failover): no request fails, the replicas follow the Sentinels
// to the promoted master and push the state back to it, healthy again within
// two seconds of it being up.
func TestSentinelMasterKilledUnderLoad(t *testing.T) {
	sentinel := testredis.StartSentinel(t)
	t.Cleanup(func() { sentinel.AssertNoSecrets(t, testValues...) })
	opts := Options{Addrs: sentinel.Addrs(), MasterName: testredis.MasterName}
	a := newHealthyReplica(t, opts)
	b := newHealthyReplica(t, opts)
	ctx := context.Background()
	keys := testKeys("openai", 6)
	poolA, poolB := newPool(t, "openai", keys, a, nil), newPool(t, "openai", keys, b, nil)
	serve := func(k keypool.Key) (keypool.Reason, keypool.Hint, bool) {
		if k.ID() == "key-1" {
			return keypool.ReasonUnauthorized, keypool.Hint{}, true
		}
		return "", keypool.Hint{}, false
	}
	l := startLoad(ctx, t, 16, []*keypool.Pool{poolA, poolB}, serve)
	l.waitRequests(t, 200)
	for name, r := range map[string]*replica{"A": a, "B": b} {
		waitFor(t, name+" sees key-1 cooling", func() bool { return r.Cooldown("openai", keys[0].Ref()).ActiveAt(time.Now()) })
	}

	master := sentinel.Master()
	for _, d := range sentinel.Data() {
		if d != master {
			d.LoseData()
		}
	}
	promoted := sentinel.KillMaster()
	up := time.Now()
	waitFor(t, "the promoted master holds key-1's cooldown and both replicas are healthy", func() bool {
		c, ok := storedCooldown(ctx, promoted.Client(), DefaultPrefix, "openai", keys[0].Ref())
		return ok && c.ActiveAt(time.Now()) && a.Healthy() && b.Healthy()
	})
	t.Logf("state pushed back to the promoted master and replicas healthy %s after it was up (target: 2s)",
		time.Since(up).Round(time.Millisecond))
	l.waitRequests(t, 200)
	l.finish(t)
}
