package redisstate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// provider answers an attempt with a key: nil when the key serves, else the
// failure reason and hint.
type provider func(k keypool.Key) (keypool.Reason, keypool.Hint, bool)

// request walks one request across replicas the way Envoy retries it: attempt n
// reaches pools[(n-1) % len(pools)]. It returns the keys tried in order, and an
// error when a replica repeated a key for the request or no key served.
func request(ctx context.Context, id string, pools []*keypool.Pool, serve provider, maxAttempts int) ([]string, error) {
	var tried []string
	triedOn := make(map[int][]string)
	for n := 1; n <= maxAttempts; n++ {
		at := (n - 1) % len(pools)
		a := keypool.Attempt{RequestID: id, Number: n}
		k, err := pools[at].Pick(ctx, a)
		if err != nil {
			return tried, fmt.Errorf("attempt %d after %v: %w", n, tried, err)
		}
		if slices.Contains(triedOn[at], k.ID()) {
			return tried, fmt.Errorf("attempt %d: replica %d gave %s again (tried %v)", n, at, k.ID(), tried)
		}
		tried = append(tried, k.ID())
		triedOn[at] = append(triedOn[at], k.ID())
		reason, hint, failed := serve(k.Key)
		if !failed {
			return tried, nil
		}
		pools[at].FailKey(ctx, a, k.Key, reason, hint)
	}
	return tried, fmt.Errorf("no key served within %d attempts: %v", maxAttempts, tried)
}

// load runs requests on several goroutines until stop is closed, counting them.
type load struct {
	done   atomic.Int64
	mu     sync.Mutex
	errs   []error
	stop   chan struct{}
	wg     sync.WaitGroup
	reused atomic.Int64 // requests that got a key twice across replicas
}

func startLoad(ctx context.Context, workers int, pools []*keypool.Pool, serve provider) *load {
	l := &load{stop: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				// Rotate which replica takes the first attempt.
				ordered := slices.Clone(pools)
				if (w+i)%2 == 1 {
					slices.Reverse(ordered)
				}
				tried, err := request(ctx, fmt.Sprintf("w%d-r%d", w, i), ordered, serve, 8)
				if err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, err)
					l.mu.Unlock()
				}
				if len(slices.Compact(slices.Sorted(slices.Values(tried)))) != len(tried) {
					l.reused.Add(1)
				}
				l.done.Add(1)
			}
		}()
	}
	return l
}

// waitRequests waits until n more requests have completed.
func (l *load) waitRequests(t *testing.T, n int64) {
	t.Helper()
	target := l.done.Load() + n
	waitFor(t, fmt.Sprintf("%d more requests", n), func() bool { return l.done.Load() >= target })
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	for _, err := range l.errs {
		t.Error(err)
	}
}

func TestRedisStoppedUnderLoad(t *testing.T) {
	srv := startRedis(t)
	a := newHealthyReplica(t, Options{URL: srv.URL()})
	b := newHealthyReplica(t, Options{URL: srv.URL()})
	keys := testKeys("openai", 4)
	pools := []*keypool.Pool{newPool(t, "openai", keys, a, nil), newPool(t, "openai", keys, b, nil)}
	ctx := context.Background()

	// key-1 is revoked; key-3 starts hitting its rate limit during the outage.
	var key3Limited atomic.Bool
	serve := func(k keypool.Key) (keypool.Reason, keypool.Hint, bool) {
		switch {
		case k.ID() == "key-1":
			return keypool.ReasonUnauthorized, keypool.Hint{}, true
		case k.ID() == "key-3" && key3Limited.Load():
			return keypool.ReasonRateLimited, keypool.Hint{After: time.Hour, Known: true}, true
		}
		return "", keypool.Hint{}, false
	}
	l := startLoad(ctx, 8, pools, serve)
	l.waitRequests(t, 200)
	if n := l.reused.Load(); n != 0 {
		t.Errorf("%d requests got a key twice while Redis was up", n)
	}
	// Keep key-2 in use by the load, key-3 next in line.
	if _, err := pools[0].Disable(ctx, "key-2", 0); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	for name, r := range map[string]*replica{"A": a, "B": b} {
		waitFor(t, name+" reports itself degraded", func() bool { return r.Ready() != nil })
		if err := r.Ready(); !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s Ready() = %v, want ErrUnavailable", name, err)
		}
		if g := r.gauge(t, "envoy_keypool_redis_up"); g != 0 {
			t.Errorf("%s envoy_keypool_redis_up = %v during the outage, want 0", name, g)
		}
	}
	l.waitRequests(t, 200)
	key3Limited.Store(true)
	l.waitRequests(t, 200)
	for name, r := range map[string]*replica{"A": a, "B": b} {
		waitFor(t, name+" marked key-3 locally", func() bool { return r.Cooldown("openai", keys[2].Ref()).ActiveAt(time.Now()) })
	}

	srv.Restart() // empty: Redis lost every mark
	for name, r := range map[string]*replica{"A": a, "B": b} {
		waitFor(t, name+" healthy again", func() bool { return r.Ready() == nil })
	}
	l.waitRequests(t, 200)
	l.finish(t)

	// The pool converged on the union of the replicas' marks, in Redis and in
	// both views.
	lay := layout{DefaultPrefix}
	for _, k := range []keypool.Key{keys[0], keys[1], keys[2]} {
		waitFor(t, "Redis and both replicas agree on "+k.ID(), func() bool {
			raw, err := srv.Client().Get(ctx, lay.cooldown("openai", k.Ref())).Result()
			st, ok := parseStored(raw)
			return err == nil && ok && st.c.ActiveAt(time.Now()) &&
				sameCooldown(a.Cooldown("openai", k.Ref()), st.c) && sameCooldown(b.Cooldown("openai", k.Ref()), st.c)
		})
	}
	for name, r := range map[string]*replica{"A": a, "B": b} {
		if n := r.logs.count("redis unreachable"); n != 1 {
			t.Errorf("%s logged the outage %d times, want once", name, n)
		}
		if n := r.logs.count("redis reachable again"); n != 1 {
			t.Errorf("%s logged the recovery %d times, want once", name, n)
		}
		if g := r.gauge(t, "envoy_keypool_redis_up"); g != 1 {
			t.Errorf("%s envoy_keypool_redis_up = %v after recovery, want 1", name, g)
		}
	}
	// Requests after recovery never reuse a key across replicas again.
	for i := range 20 {
		if tried, err := request(ctx, fmt.Sprintf("after-%d", i), pools, serve, 8); err != nil || len(tried) != 1 || tried[0] != "key-4" {
			t.Errorf("request after recovery tried %v (%v), want key-4 at once", tried, err)
		}
	}
}

func TestPartitionedRedisNeverHoldsARequestPastTheTimeout(t *testing.T) {
	srv := startRedis(t)
	proxy := testredis.NewProxy(t, srv.Addr())
	a := newHealthyReplica(t, Options{URL: proxy.URL(), Timeout: 50 * time.Millisecond})
	b := newHealthyReplica(t, Options{URL: srv.URL()})
	keys := testKeys("openai", 3)
	ctx := context.Background()
	hour := keypool.Cooldown{Until: time.Now().Add(time.Hour), Reason: keypool.ReasonUnauthorized}
	b.MarkFailed(ctx, "openai", keys[1].Ref(), "", hour)
	waitFor(t, "A sees key-2 marked", func() bool { return a.Cooldown("openai", keys[1].Ref()).ActiveAt(time.Now()) })

	proxy.Freeze()
	start := time.Now()
	got := a.MarkFailed(ctx, "openai", keys[0].Ref(), "req-1", hour)
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("MarkFailed took %s with Redis partitioned, want about the 50ms timeout", elapsed)
	}
	if !sameCooldown(got, hour) || !a.Cooldown("openai", keys[0].Ref()).ActiveAt(time.Now()) {
		t.Errorf("MarkFailed during the partition = %+v, want the mark kept locally", got)
	}
	if a.Healthy() {
		t.Error("A still healthy after a timed out call")
	}
	start = time.Now()
	view := a.RequestView(ctx, "openai", []string{keys[0].Ref(), keys[1].Ref(), keys[2].Ref()}, "req-1")
	if elapsed := time.Since(start); elapsed > 10*time.Millisecond {
		t.Errorf("RequestView took %s while degraded, want no wait on Redis", elapsed)
	}
	if !slices.Contains(view.Tried, keys[0].Ref()) || !view.Cooldowns[keys[0].Ref()].ActiveAt(time.Now()) {
		t.Errorf("RequestView during the partition = %+v, want key-1 tried and cooling from the local view", view)
	}

	// Meanwhile an operator enables key-2 through B.
	if err := b.Override(ctx, "openai", keys[1].Ref(), keypool.Cooldown{}); err != nil {
		t.Fatal(err)
	}
	proxy.Thaw()
	waitFor(t, "A healthy again", func() bool { return a.Ready() == nil })
	waitFor(t, "B learns A's mark from the partition", func() bool { return sameCooldown(b.Cooldown("openai", keys[0].Ref()), hour) })
	waitFor(t, "A drops key-2's cooldown, enabled while it was away", func() bool {
		return !a.Cooldown("openai", keys[1].Ref()).ActiveAt(time.Now())
	})
	if n := a.logs.count("redis unreachable"); n != 1 {
		t.Errorf("A logged the outage %d times, want once", n)
	}
}

func TestStartsDegradedWhenRedisIsDown(t *testing.T) {
	srv := startRedis(t)
	srv.Stop()
	a := newReplica(t, Options{URL: srv.URL()})
	if err := a.Ready(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ready() = %v, want ErrUnavailable", err)
	}
	keys := testKeys("openai", 2)
	pool := newPool(t, "openai", keys, a, nil)
	ctx := context.Background()
	att := keypool.Attempt{RequestID: "r", Number: 1}
	k, err := pool.Pick(ctx, att)
	if err != nil || k.ID() != "key-1" {
		t.Fatalf("Pick = %v, %v; want key-1 from the local view", k, err)
	}
	c := pool.FailKey(ctx, att, k.Key, keypool.ReasonRateLimited, keypool.Hint{After: time.Hour, Known: true})
	if k, err := pool.Pick(ctx, keypool.Attempt{RequestID: "r", Number: 2}); err != nil || k.ID() != "key-2" {
		t.Fatalf("retry Pick = %v, %v; want key-2", k, err)
	}

	srv.Restart()
	waitFor(t, "A healthy once Redis is up", func() bool { return a.Ready() == nil })
	b := newHealthyReplica(t, Options{URL: srv.URL()})
	if got := b.Cooldown("openai", keys[0].Ref()); !sameCooldown(got, c) {
		t.Errorf("a new replica sees %+v for key-1, want the mark A made while Redis was down %+v", got, c)
	}
	if n := a.logs.count("redis unreachable"); n != 1 {
		t.Errorf("A logged the outage %d times, want once", n)
	}
}

func TestStartsDegradedWhenRedisHangs(t *testing.T) {
	srv := startRedis(t)
	proxy := testredis.NewProxy(t, srv.Addr())
	proxy.Freeze()
	start := time.Now()
	a := newReplica(t, Options{URL: proxy.URL()}) // New's context allows 10s
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("New took %s against a Redis that never answers, want about one health check interval", elapsed)
	}
	if err := a.Ready(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ready() = %v, want ErrUnavailable", err)
	}
	proxy.Thaw()
	waitFor(t, "healthy once Redis answers", func() bool { return a.Ready() == nil })
}
