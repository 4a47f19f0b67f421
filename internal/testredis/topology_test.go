package testredis_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
)

func TestClusterPromotesAReplicaOfAKilledMaster(t *testing.T) {
	c := testredis.StartCluster(t)
	if n := len(c.Masters()); n != 3 {
		t.Fatalf("%d masters, want 3", n)
	}
	ctx := context.Background()
	cc := c.Client()
	if err := cc.Set(ctx, "{p}:k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := cc.MSet(ctx, "{p}:a", "1", "{q}:b", "2").Err(); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Errorf("MSET across slots: %v, want CROSSSLOT", err)
	}
	master := c.MasterOf("{p}:k")
	// The write must reach the replica before the master dies.
	if n, err := master.Client().Wait(ctx, 1, 5*time.Second).Result(); err != nil || n < 1 {
		t.Fatalf("WAIT: %d replicas, %v", n, err)
	}
	promoted := c.KillMaster(master)
	if promoted == master || master.Running() {
		t.Fatalf("promoted %s, old master running %v", promoted.Addr(), master.Running())
	}
	if got := c.MasterOf("{p}:k"); got != promoted {
		t.Errorf("slot served by %s, want the promoted %s", got.Addr(), promoted.Addr())
	}
	// go-redis reloads its slot map on MOVED or ASK, or every
	// ClusterStateReloadInterval (60s): a refused connection to the dead master
	// does not, so a client must ask (osscluster.go, ClusterClient.process).
	eventually(t, func(ctx context.Context) (string, error) {
		v, err := cc.Get(ctx, "{p}:k").Result()
		if err != nil {
			cc.ReloadState(ctx)
		}
		return v, err
	})
	if n := len(c.Masters()); n != 3 {
		t.Errorf("%d masters after the failover, want 3", n)
	}
}

func TestSentinelPromotesAReplicaOfAKilledMaster(t *testing.T) {
	s := testredis.StartSentinel(t)
	ctx := context.Background()
	client := s.Client()
	if err := client.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	old := s.Master()
	if old != s.Data()[0] {
		t.Fatalf("master is %s, want the first node started", old.Addr())
	}
	if n, err := old.Client().Wait(ctx, 2, 5*time.Second).Result(); err != nil || n < 2 {
		t.Fatalf("WAIT: %d replicas, %v", n, err)
	}
	promoted := s.KillMaster()
	if promoted == old || s.Master() != promoted {
		t.Fatalf("promoted %s, Sentinels name %s; old %s", promoted.Addr(), s.Master().Addr(), old.Addr())
	}
	eventually(t, func(ctx context.Context) (string, error) { return client.Get(ctx, "k").Result() })
}

// A replica that loses its data right after a burst of writes holds none of
// them, even those still on their way to it, and still takes the writes that
// come after.
func TestLoseDataDropsEveryEarlierWriteAndKeepsLaterOnes(t *testing.T) {
	s := testredis.StartSentinel(t)
	ctx := context.Background()
	master := s.Master()
	pipe := master.Client().Pipeline()
	for i := range 5000 {
		pipe.Set(ctx, fmt.Sprintf("before-%d", i), "x", 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	var replicas []*testredis.Server
	for _, d := range s.Data() {
		if d != master {
			d.LoseData()
			replicas = append(replicas, d)
		}
	}
	if err := master.Client().Set(ctx, "after", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, r := range replicas {
		eventually(t, func(ctx context.Context) (string, error) { return r.Client().Get(ctx, "after").Result() })
		if n, err := r.Client().DBSize(ctx).Result(); err != nil || n != 1 {
			t.Errorf("replica %s holds %d keys (%v), want only the later write", r.Addr(), n, err)
		}
	}
}

// eventually polls get until it returns "v", failing the test after 20s.
func eventually(t *testing.T, get func(ctx context.Context) (string, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		v, err := get(ctx)
		if err == nil && v == "v" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("after the failover: %q, %v; want the replicated value", v, err)
		case <-tick.C:
		}
	}
}
