package redisstate

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Redis holds one thing per request, its tried set, from the request's first
// failure until it ends or its TTL passes: after a load of failed-over
// requests Redis holds the keys it held before, whatever the number of
// requests. The figures (bytes per request in flight, before/after ratios)
// are logged for BENCHMARKS.md.
func TestRedisKeysFlatAfterALoad(t *testing.T) {
	srv := startRedis(t)
	a := newHealthyReplica(t, Options{URL: srv.URL()})
	b := newHealthyReplica(t, Options{URL: srv.URL()})
	keys := testKeys("openai", 3)
	pools := []*keypool.Pool{newPool(t, "openai", keys, a, nil), newPool(t, "openai", keys, b, nil)}
	ctx := context.Background()
	// The pool's own state: key-3 cooling.
	pools[0].FailKey(ctx, keypool.Attempt{RequestID: "warm", Number: 1}, keys[2], keypool.ReasonRateLimited,
		keypool.Hint{After: time.Hour, Known: true})
	a.Forget(ctx, "openai", "warm")
	waitFor(t, "the warm-up's tried set forgotten", func() bool { return dbSize(t, srv) == 3 }) // meta, idx, key-3
	baseKeys, baseMem := dbSize(t, srv), usedMemory(t, srv)

	const requests = 1000
	for i := range requests {
		// Attempt 1 on one replica: key-1 cannot take the request (a failure
		// of the request's own: it fails over, nothing cools).
		first := keypool.Attempt{RequestID: "req-" + strconv.Itoa(i), Number: 1}
		pk, err := pools[i%2].Pick(ctx, first)
		if err != nil || pk.ID() != "key-1" {
			t.Fatalf("request %d: attempt 1 = %v, %v; want key-1", i, pk.ID(), err)
		}
		pools[i%2].Fail(ctx, first, pk, keypool.Failure{Class: keypool.ClassRequestTooLarge})
	}
	inflightKeys, inflightMem := dbSize(t, srv), usedMemory(t, srv)
	if inflightKeys != baseKeys+requests {
		t.Errorf("%d keys with %d requests in flight, want %d: one tried set each", inflightKeys, requests, baseKeys+requests)
	}
	tried := layout{DefaultPrefix}.tried("openai", "req-0")
	if ttl := srv.Client().PTTL(ctx, tried).Val(); ttl <= 0 || ttl > keypool.DefaultTriedTTL {
		t.Errorf("a tried set's TTL is %s, want (0, %s]: a request that never ends is collected", ttl, keypool.DefaultTriedTTL)
	}
	for i := range requests {
		// Attempt 2 on the other replica: key-2 serves, the request ends.
		retry := keypool.Attempt{RequestID: "req-" + strconv.Itoa(i), Number: 2}
		p := pools[(i+1)%2]
		pk, err := p.Pick(ctx, retry)
		if err != nil || pk.ID() != "key-2" {
			t.Fatalf("request %d: attempt 2 = %v, %v; want key-2", i, pk.ID(), err)
		}
		p.Finish(ctx, retry, pk, keypool.Headroom{})
	}
	waitFor(t, "Redis holding the keys it held before the load", func() bool { return dbSize(t, srv) == baseKeys })
	afterMem := usedMemory(t, srv)
	t.Logf("Redis keys: %d before, %d with %d failed-over requests in flight, %d after (after/before %.2f)",
		baseKeys, inflightKeys, requests, dbSize(t, srv), float64(dbSize(t, srv))/float64(baseKeys))
	t.Logf("used_memory: %d B before, +%d B per failed-over request in flight, %d B after (after/before %.3f)",
		baseMem, (inflightMem-baseMem)/requests, afterMem, float64(afterMem)/float64(baseMem))

	// What a key with state costs: 200 keys cooling key-wide, then per model.
	many := testKeys("openai", 200)
	until := keypool.Cooldown{Until: time.Now().Add(time.Hour), Reason: keypool.ReasonRateLimited}
	for _, model := range []string{"", "gpt-4o"} {
		before := usedMemory(t, srv)
		for _, k := range many {
			a.Mark(ctx, "openai", keypool.Mark{Scope: keypool.Scope{Ref: k.Ref(), Model: model}, Cooldown: until, Span: time.Hour})
		}
		t.Logf("used_memory: +%d B per key cooling (scope %q added)", (usedMemory(t, srv)-before)/int64(len(many)), model)
	}
}

func dbSize(t *testing.T, srv *testredis.Server) int64 {
	t.Helper()
	n, err := srv.Client().DBSize(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// usedMemory is INFO memory's used_memory: what Redis allocated for data and
// bookkeeping, in bytes.
func usedMemory(t *testing.T, srv *testredis.Server) int64 {
	t.Helper()
	info, err := srv.Client().Info(context.Background(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal(fmt.Errorf("no used_memory in INFO memory"))
	return 0
}
