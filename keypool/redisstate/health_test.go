package redisstate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"cdr.dev/slog/v3"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// The rule that decides an outage from the outcomes of calls, S a call Redis
// answered and F one that failed, oldest first.
func TestOutageNeedsMoreThanASlowCall(t *testing.T) {
	tests := []struct {
		name     string
		outcomes string
		down     bool
	}{
		{"one failure is not an outage", "F", false},
		{"two failures in a row are not", "FF", false},
		{"three failures in a row are", "FFF", true},
		{"a success resets the count", "FFSFFS", false},
		{"one call in fifty failing is not", strings.Repeat(strings.Repeat("S", 49)+"F", 4), false},
		{"every other call failing is", strings.Repeat("FS", 10), true},
		{"nine of the last twenty failing is not", strings.Repeat("FSS", 3) + strings.Repeat("S", 11), false},
		{"old failures leave the window", strings.Repeat("FS", 9) + strings.Repeat("S", 20) + "F", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := newMetrics(nil)
			h := &health{log: slog.Make(), metrics: m}
			h.recovered(context.Background(), 0, 0)
			for _, o := range tt.outcomes {
				if o == 'F' {
					h.failed(context.Background(), "mark", errors.New("i/o timeout"))
				} else {
					h.succeeded()
				}
			}
			if down := !h.up(); down != tt.down {
				t.Errorf("down = %v after %s, want %v", down, tt.outcomes, tt.down)
			}
		})
	}
}

// A proxy delays one call in 50 past the timeout: those calls give up, the
// replica stays healthy (no outage logged, requests keep using Redis); then a
// real outage still takes it to its local view.
func TestSlowCallsNowAndThenAreNotAnOutage(t *testing.T) {
	srv := startRedis(t)
	proxy := testredis.NewProxy(t, srv.Addr())
	const timeout = 50 * time.Millisecond
	// The subscription's PING waits a whole interval for its answer: a delayed
	// one is late, not lost.
	a := newHealthyReplica(t, Options{URL: proxy.URL(), Timeout: timeout, HealthCheckInterval: time.Second})
	keys := testKeys("openai", 4)
	refs := make([]string, len(keys))
	for i, k := range keys {
		refs[i] = k.Ref()
	}
	ctx := context.Background()

	proxy.DelayEvery(50, timeout+100*time.Millisecond)
	// Until a dozen calls were slow (the calls in the hold-off after each go
	// nowhere and take no time, so count the slow calls, not the iterations).
	for i := 0; proxy.Delayed() < 12; i++ {
		if i == 20000 {
			t.Fatalf("the proxy delayed %d calls in %d iterations: the test proves nothing", proxy.Delayed(), i)
		}
		c := keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonRateLimited}
		id := fmt.Sprintf("req-%d", i)
		a.MarkFailed(ctx, "openai", refs[i%len(refs)], id, c)
		a.RequestView(ctx, "openai", refs, id)
		if !a.Healthy() {
			t.Fatalf("call %d: replica went degraded after %d delayed calls: %v", i, proxy.Delayed(), a.Ready())
		}
	}
	if n := a.logs.count("redis unreachable"); n != 0 {
		t.Errorf("logged %d outages for calls that were only slow", n)
	}
	if g := a.gauge(t, "envoy_keypool_redis_up"); g != 1 {
		t.Errorf("envoy_keypool_redis_up = %v, want 1", g)
	}

	proxy.DelayEvery(0, 0)
	srv.Stop()
	waitFor(t, "degraded once Redis stopped", func() bool {
		a.MarkFailed(ctx, "openai", refs[0], "", keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonRateLimited})
		return !a.Healthy()
	})
	if err := a.Ready(); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ready() = %v, want ErrUnavailable", err)
	}
	if n := a.logs.count("redis unreachable"); n != 1 {
		t.Errorf("logged the outage %d times, want once", n)
	}
}

// After one of a pool's calls failed, the pool's calls skip Redis for one
// Timeout (a message making two calls waits once), the other pools' calls do
// not, and then the pool's calls go to Redis again; none of it is an outage.
func TestAFailedCallHoldsThePoolOffRedisForOneTimeout(t *testing.T) {
	srv := startRedis(t)
	proxy := testredis.NewProxy(t, srv.Addr())
	const timeout = 50 * time.Millisecond
	a := newHealthyReplica(t, Options{URL: proxy.URL(), Timeout: timeout, HealthCheckInterval: time.Minute,
		Pools: []string{"openai", "anthropic"}})
	ctx := context.Background()

	proxy.DelayEvery(1, timeout+50*time.Millisecond) // the next call is slow
	a.counter.Reset()
	a.Tried(ctx, "openai", "req-1")
	proxy.DelayEvery(0, 0)
	if n := a.counter.RoundTrips(); n != 1 {
		t.Fatalf("the slow call made %d round trips, want 1", n)
	}
	a.counter.Reset()
	a.Tried(ctx, "openai", "req-1") // right after: held off
	if n := a.counter.RoundTrips(); n != 0 {
		t.Errorf("a call of the pool right after its failed call made %d round trips, want 0", n)
	}
	a.Tried(ctx, "anthropic", "req-1")
	if n := a.counter.RoundTrips(); n != 1 {
		t.Errorf("another pool's call made %d round trips, want 1", n)
	}
	waitFor(t, "the pool's calls going to Redis again", func() bool {
		a.counter.Reset()
		a.Tried(ctx, "openai", "req-2")
		return a.counter.RoundTrips() == 1
	})
	if !a.Healthy() || a.logs.count("redis unreachable") != 0 {
		t.Errorf("one slow call made an outage: %v", a.Ready())
	}
}
