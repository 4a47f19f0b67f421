package redisstate

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// benchStates returns the states compared in one run: in memory, and Redis on a
// local redis-server (loopback: the network cost of a real deployment comes on
// top of the Redis numbers).
func benchStates(b *testing.B) []struct {
	name  string
	state keypool.State
} {
	b.Helper()
	srv := testredis.Start(b)
	s, err := New(context.Background(), Options{URL: srv.URL(), RequestTTL: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	if !s.Healthy() {
		b.Fatalf("redis state not healthy: %v", s.Ready())
	}
	return []struct {
		name  string
		state keypool.State
	}{
		{"memory", keypool.NewMemoryState(nil, time.Minute)},
		{"redis", s},
	}
}

// BenchmarkPick measures Pool.Pick on a pool of 4 keys whose first key cools
// down: a first attempt (local view) and a retry (authoritative read).
func BenchmarkPick(b *testing.B) {
	ctx := context.Background()
	for _, st := range benchStates(b) {
		keys := testKeys("openai", 4)
		pool := newPool(b, "openai", keys, st.state, nil)
		pool.FailKey(ctx, keypool.Attempt{RequestID: "setup", Number: 1}, keys[0], keypool.ReasonRateLimited,
			keypool.Hint{After: time.Hour, Known: true})
		for _, attempt := range []struct {
			name   string
			number int
		}{{"first", 1}, {"retry", 2}} {
			b.Run(st.name+"/"+attempt.name, func(b *testing.B) {
				b.ReportAllocs()
				a := keypool.Attempt{RequestID: "bench", Number: attempt.number}
				for b.Loop() {
					if _, err := pool.Pick(ctx, a); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkMark measures Pool.Fail: a new, later cooldown for a key and a new
// request each time, as after a real 429.
func BenchmarkMark(b *testing.B) {
	ctx := context.Background()
	for _, st := range benchStates(b) {
		keys := testKeys("openai", 4)
		pool := newPool(b, "openai", keys, st.state, nil)
		b.Run(st.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				a := keypool.Attempt{RequestID: "bench-" + strconv.Itoa(i), Number: 1}
				pool.FailKey(ctx, a, keys[i%len(keys)], keypool.ReasonRateLimited, keypool.Hint{})
			}
		})
	}
}
