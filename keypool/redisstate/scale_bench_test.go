package redisstate

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// BenchmarkNotification measures what change notifications cost a replica
// (parsing, applying to the local view, publishing the pool's new View) when
// the pool holds 10 and 1,000 scopes with state: "isolated" waits for each
// notification's View before the next, "burst" sends them back to back (the
// publisher then takes several in one copy). views/op is how many Views were
// published per notification.
func BenchmarkNotification(b *testing.B) {
	for _, mode := range []string{"isolated", "burst"} {
		for _, n := range []int{10, 1000} {
			b.Run(fmt.Sprintf("%s/scopes=%d", mode, n), func(b *testing.B) {
				m, _ := newMetrics(nil)
				s := &State{view: newView(time.Minute), metrics: m}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); s.view.publishLoop(ctx, time.Now) }()
				defer func() { cancel(); <-done }()
				now := time.Now()
				until := now.Add(time.Hour).UnixMilli()
				keys := testKeys("openai", n)
				for i, k := range keys {
					s.notified(notification("openai", k.Ref(), int64(i+1), until, now.UnixMilli()))
				}
				ref := keys[0].Ref()
				published := func(u int64) bool {
					v := s.View("openai")
					return v != nil && len(v.Entries) == n && v.Entries[keypool.Scope{Ref: ref}].Until.UnixMilli() == u
				}
				for !published(until) {
					runtime.Gosched()
				}
				version := int64(n)
				generation := func() uint64 {
					s.view.mu.Lock()
					defer s.view.mu.Unlock()
					return s.view.generation["openai"]
				}
				before := generation()
				b.ReportAllocs()
				for b.Loop() {
					version++
					s.notified(notification("openai", ref, version, until+version, now.UnixMilli()))
					for mode == "isolated" && !published(until+version) {
						runtime.Gosched()
					}
				}
				for !published(until + version) {
					runtime.Gosched()
				}
				b.ReportMetric(float64(generation()-before)/float64(b.N), "views/op")
			})
		}
	}
}

// notification is the change message of a key with one key-wide cooldown.
func notification(pool, ref string, version, untilMs, atMs int64) string {
	return pool + " " + ref + " " + strconv.FormatInt(version, 10) + " 0\n* " +
		strconv.FormatInt(untilMs, 10) + " " + strconv.FormatInt(atMs, 10) + " 3600000 0 - rate_limited"
}

// BenchmarkMarkVisibility measures how long a mark made on one of 8 replicas
// of one Redis takes to reach the local view of another replica (each of the 7
// others counted on its own), and of all 7, marks going round the replicas and
// across the keys of a 1,000-key pool (so the pool ends with up to 1,000
// scopes with state). The baseline, in the same run, is the mark's own call.
// Reported: p50 and p99 of each, in ms, and the p99 ratio of one replica's
// visibility to the mark's call.
func BenchmarkMarkVisibility(b *testing.B) {
	srv := startRedis(b)
	const replicas = 8
	rs := make([]*replica, replicas)
	for i := range rs {
		rs[i] = newHealthyReplica(b, Options{URL: srv.URL()})
	}
	keys := testKeys("openai", 1000)
	ctx := context.Background()
	var calls, each, all []time.Duration
	i := 0
	for b.Loop() {
		i++
		from, ref := rs[i%replicas], keys[i%len(keys)].Ref()
		c := keypool.Cooldown{Until: time.Now().Add(time.Hour + time.Duration(i)*time.Millisecond), Reason: keypool.ReasonRateLimited}
		start := time.Now()
		from.Mark(ctx, "openai", keypool.Mark{Scope: keypool.Scope{Ref: ref}, Cooldown: c, Span: time.Hour})
		calls = append(calls, time.Since(start))
		// Poll every other replica in turn, noting when each first sees the mark.
		waiting := slices.DeleteFunc(slices.Clone(rs), func(r *replica) bool { return r == from })
		for len(waiting) > 0 {
			if time.Since(start) > 10*time.Second {
				b.Fatalf("mark %d not seen by %d replicas after 10s", i, len(waiting))
			}
			waiting = slices.DeleteFunc(waiting, func(r *replica) bool {
				seen := sameCooldown(r.Cooldown("openai", ref), c)
				if seen {
					each = append(each, time.Since(start))
				}
				return seen
			})
			runtime.Gosched()
		}
		all = append(all, time.Since(start))
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(quantile(calls, 0.5)), "mark-p50-ms")
	b.ReportMetric(ms(quantile(calls, 0.99)), "mark-p99-ms")
	b.ReportMetric(ms(quantile(each, 0.5)), "one-sees-p50-ms")
	b.ReportMetric(ms(quantile(each, 0.99)), "one-sees-p99-ms")
	b.ReportMetric(ms(quantile(all, 0.5)), "all-7-see-p50-ms")
	b.ReportMetric(ms(quantile(all, 0.99)), "all-7-see-p99-ms")
	b.ReportMetric(float64(quantile(each, 0.99))/float64(quantile(calls, 0.99)), "p99-ratio")
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// BenchmarkRetryRead measures a retry's Pick (the request's tried set from
// Redis, one SMEMBERS, and the walk of the local view) in a pool of 5 keys and
// one of 1,000, on one Redis in the same run: the read must not grow with the
// pool.
func BenchmarkRetryRead(b *testing.B) {
	srv := startRedis(b)
	s := newHealthyReplica(b, Options{URL: srv.URL(), Pools: []string{"small", "large"}})
	ctx := context.Background()
	for _, p := range []struct {
		name string
		size int
	}{{"small", 5}, {"large", 1000}} {
		keys := testKeys(p.name, p.size)
		pool := newPool(b, p.name, keys, s, nil)
		first := keypool.Attempt{RequestID: "bench-" + p.name, Number: 1}
		pk, err := pool.Pick(ctx, first)
		if err != nil {
			b.Fatal(err)
		}
		pool.Fail(ctx, first, pk, keypool.Failure{Class: keypool.ClassRequestTooLarge})
		b.Run(fmt.Sprintf("keys=%d", p.size), func(b *testing.B) {
			b.ReportAllocs()
			retry := keypool.Attempt{RequestID: first.RequestID, Number: 2}
			for b.Loop() {
				if got, err := pool.Pick(ctx, retry); err != nil || got.ID() == "key-1" {
					b.Fatalf("retry = %v, %v; want another key than key-1", got.ID(), err)
				}
			}
		})
	}
}
