package redisstate

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// dataCalls sums INFO commandstats calls of the commands the request path could
// send, whichever client sends them.
func dataCalls(t *testing.T, srv *testredis.Server) int {
	t.Helper()
	info, err := srv.Client().Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch strings.TrimPrefix(name, "cmdstat_") {
		case "evalsha", "eval", "get", "mget", "smembers", "hmget", "hget", "set", "sadd":
			calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
			n, _ := strconv.Atoi(calls)
			total += n
		}
	}
	return total
}

func TestRedisRoundTripsPerAttempt(t *testing.T) {
	for _, topo := range topologies() {
		t.Run(topo.name, func(t *testing.T) {
			srv := startRedis(t, topo.server...)
			a := newHealthyReplica(t, topo.options(srv))
			b := newHealthyReplica(t, topo.options(srv))
			keys := testKeys("openai", 3)
			poolA := newPool(t, "openai", keys, a, nil)
			poolB := newPool(t, "openai", keys, b, nil)
			ctx := context.Background()

			// Warm up: a failover elsewhere in the pool, seen by both replicas.
			poolA.FailKey(ctx, keypool.Attempt{RequestID: "warm", Number: 1}, keys[2], keypool.ReasonRateLimited, keypool.Hint{})
			waitFor(t, "B sees the warm-up mark", func() bool { return b.Cooldown("openai", keys[2].Ref()).ActiveAt(time.Now()) })

			a.counter.Reset()
			before := dataCalls(t, srv)
			for i := range 100 {
				k, err := poolA.Pick(ctx, keypool.Attempt{RequestID: "healthy-" + strconv.Itoa(i), Number: 1})
				if err != nil || k.ID() != "key-1" {
					t.Fatalf("Pick = %v, %v; want key-1", k, err)
				}
			}
			if n := a.counter.RoundTrips(); n != 0 {
				t.Errorf("100 healthy first attempts made %d round trips (%v), want 0", n, a.counter.Commands())
			}
			if n := dataCalls(t, srv) - before; n != 0 {
				t.Errorf("INFO commandstats counted %d data commands for healthy first attempts, want 0", n)
			}

			// A failover: attempt 1 fails on A, attempt 2 lands on B.
			a.counter.Reset()
			b.counter.Reset()
			first := keypool.Attempt{RequestID: "failover", Number: 1}
			k, _ := poolA.Pick(ctx, first)
			poolA.FailKey(ctx, first, k.Key, keypool.ReasonRateLimited, keypool.Hint{})
			got, err := poolB.Pick(ctx, keypool.Attempt{RequestID: "failover", Number: 2})
			if err != nil || got.ID() != "key-2" {
				t.Fatalf("attempt 2 = %v, %v; want key-2", got, err)
			}
			if n := a.counter.RoundTrips() + b.counter.RoundTrips(); n != 2 {
				t.Errorf("failover made %d round trips (A %v, B %v), want 2: the mark, then the retry's read",
					n, a.counter.Commands(), b.counter.Commands())
			}
		})
	}
}

func TestLocalCooldownReadDoesNotAllocate(t *testing.T) {
	srv := startRedis(t)
	s := newHealthyReplica(t, Options{URL: srv.URL()})
	ref := testKeys("openai", 1)[0].Ref()
	s.MarkFailed(context.Background(), "openai", ref, "", keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonRateLimited})
	var c keypool.Cooldown
	allocs := testing.AllocsPerRun(1000, func() { c = s.Cooldown("openai", ref) })
	if allocs != 0 {
		t.Errorf("Cooldown allocates %v times per call, want 0", allocs)
	}
	if !c.ActiveAt(time.Now()) {
		t.Error("Cooldown lost the mark")
	}
}
