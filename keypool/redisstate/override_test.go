package redisstate

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// An operator's enable or disable made on a replica that cannot reach Redis is
// in force on that replica at once, answered as pending, and reaches the other
// replicas when Redis returns, whether Redis kept its data or came back empty.
func TestOperatorActionDuringAnOutage(t *testing.T) {
	hour := func() keypool.Cooldown {
		return keypool.Cooldown{Until: time.Now().Add(time.Hour), Reason: keypool.ReasonUnauthorized}
	}
	tests := []struct {
		name string
		// outage cuts replica A off; recover ends it. B is cut off too when
		// Redis itself stops.
		outage, recover func(srv *testredis.Server, proxy *testredis.Proxy)
		bothCut         bool
		before          bool // key-1 cooling before the outage
		act             func(ctx context.Context, p *keypool.Pool) error
		// first runs on B while A is cut off (B reaches Redis), before A acts;
		// during after.
		first, during func(ctx context.Context, b *replica, ref string)
		immediate     bool // key-1 available on A right after the action
		available     bool // key-1 afterwards, on both replicas
	}{
		{
			name:   "an enable while Redis is down reaches the other replica when Redis returns empty",
			outage: func(srv *testredis.Server, _ *testredis.Proxy) { srv.Stop() }, recover: func(srv *testredis.Server, _ *testredis.Proxy) { srv.Restart() },
			bothCut: true, before: true,
			act:       func(ctx context.Context, p *keypool.Pool) error { return p.Enable(ctx, "key-1") },
			immediate: true, available: true,
		},
		{
			name:   "a disable while Redis is down reaches the other replica when Redis returns empty",
			outage: func(srv *testredis.Server, _ *testredis.Proxy) { srv.Stop() }, recover: func(srv *testredis.Server, _ *testredis.Proxy) { srv.Restart() },
			bothCut: true,
			act: func(ctx context.Context, p *keypool.Pool) error {
				_, err := p.Disable(ctx, "key-1", 0)
				return err
			},
			immediate: false, available: false,
		},
		{
			name:   "an enable through a partition reaches the other replica, Redis keeping its data",
			outage: func(_ *testredis.Server, p *testredis.Proxy) { p.Freeze() }, recover: func(_ *testredis.Server, p *testredis.Proxy) { p.Thaw() },
			before:    true,
			act:       func(ctx context.Context, p *keypool.Pool) error { return p.Enable(ctx, "key-1") },
			immediate: true, available: true,
		},
		{
			name:   "a failure on another replica before the enable is ended by it",
			outage: func(_ *testredis.Server, p *testredis.Proxy) { p.Freeze() }, recover: func(_ *testredis.Server, p *testredis.Proxy) { p.Thaw() },
			first: func(ctx context.Context, b *replica, ref string) {
				b.MarkFailed(ctx, "openai", ref, "", hour())
			},
			act:       func(ctx context.Context, p *keypool.Pool) error { return p.Enable(ctx, "key-1") },
			immediate: true, available: true,
		},
		{
			name:   "a failure on another replica after the enable still cools the key",
			outage: func(_ *testredis.Server, p *testredis.Proxy) { p.Freeze() }, recover: func(_ *testredis.Server, p *testredis.Proxy) { p.Thaw() },
			before: true,
			act:    func(ctx context.Context, p *keypool.Pool) error { return p.Enable(ctx, "key-1") },
			during: func(ctx context.Context, b *replica, ref string) {
				b.MarkFailed(ctx, "openai", ref, "", hour())
			},
			immediate: true, available: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startRedis(t)
			proxy := testredis.NewProxy(t, srv.Addr())
			clock := newFakeClock()
			a := newHealthyReplica(t, Options{URL: proxy.URL(), Clock: clock})
			b := newHealthyReplica(t, Options{URL: srv.URL(), Clock: clock})
			keys := testKeys("openai", 2)
			ref := keys[0].Ref()
			poolA := newPool(t, "openai", keys, a, clock)
			ctx := context.Background()
			if tt.before {
				a.MarkFailed(ctx, "openai", ref, "", hour())
				waitFor(t, "B sees key-1 cooling", func() bool { return b.Cooldown("openai", ref).ActiveAt(time.Now()) })
			}

			tt.outage(srv, proxy)
			waitFor(t, "A degraded", func() bool { return !a.Healthy() })
			if tt.bothCut {
				waitFor(t, "B degraded", func() bool { return !b.Healthy() })
			}
			if tt.first != nil {
				tt.first(ctx, b, ref)
				clock.Advance(time.Millisecond) // the action comes after, to the millisecond Redis keeps
			}
			err := tt.act(ctx, poolA)
			if !errors.Is(err, keypool.ErrPending) {
				t.Fatalf("action during the outage: err = %v, want keypool.ErrPending (applied here, not yet shared)", err)
			}
			if got := a.Cooldown("openai", ref).ActiveAt(time.Now()); got == tt.immediate {
				t.Errorf("A right after the action: cooling = %v, want the action in force at once", got)
			}
			if tt.during != nil {
				clock.Advance(time.Millisecond) // after the action, to the millisecond Redis keeps
				tt.during(ctx, b, ref)
			}

			tt.recover(srv, proxy)
			for name, r := range map[string]*replica{"A": a, "B": b} {
				waitFor(t, name+" healthy again", func() bool { return r.Healthy() })
				waitFor(t, name+" holds the outcome", func() bool {
					return r.Cooldown("openai", ref).ActiveAt(time.Now()) != tt.available
				})
			}
			// Redis holds it too: a replica that starts now agrees.
			c := newHealthyReplica(t, Options{URL: srv.URL(), Clock: clock})
			if got := c.Cooldown("openai", ref).ActiveAt(time.Now()); got == tt.available {
				t.Errorf("a new replica: cooling = %v, want Redis to hold the outcome", got)
			}
			if got := a.RequestView(ctx, "openai", []string{ref}, "").Cooldowns[ref].ActiveAt(time.Now()); got == tt.available {
				t.Errorf("A's authoritative read: cooling = %v", got)
			}
		})
	}
}

// A resync reads the pools the replica was told about: a replica that starts
// after another marked keys of two pools has both at once, and no replica ever
// scans the keyspace.
func TestResyncReadsItsPoolsWithoutScanning(t *testing.T) {
	srv := startRedis(t)
	a := newHealthyReplica(t, Options{URL: srv.URL()})
	openai, anthropic := testKeys("openai", 1)[0], testKeys("anthropic", 1)[0]
	ctx := context.Background()
	c := keypool.Cooldown{Until: time.Now().Add(time.Hour), Reason: keypool.ReasonRateLimited}
	a.MarkFailed(ctx, "openai", openai.Ref(), "", c)
	a.MarkFailed(ctx, "anthropic", anthropic.Ref(), "", c)

	b := newHealthyReplica(t, Options{URL: srv.URL(), Pools: []string{"openai", "anthropic"}})
	if got := commandCalls(t, srv, "scan", "keys"); got != 0 {
		t.Errorf("SCAN or KEYS called %d times, want none", got)
	}
	if !sameCooldown(b.Cooldown("openai", openai.Ref()), c) || !sameCooldown(b.Cooldown("anthropic", anthropic.Ref()), c) {
		t.Errorf("a new replica's view: openai %+v, anthropic %+v; want both marks", b.Cooldown("openai", openai.Ref()), b.Cooldown("anthropic", anthropic.Ref()))
	}
	srv.Restart()
	for name, r := range map[string]*replica{"A": a, "B": b} {
		waitFor(t, name+" resynchronised after the restart", func() bool { return r.Healthy() })
	}
	if got := commandCalls(t, srv, "scan", "keys"); got != 0 {
		t.Errorf("SCAN or KEYS called %d times, want none", got)
	}
	waitFor(t, "the restarted Redis has both marks back", func() bool {
		return srv.Client().Exists(ctx, layout{DefaultPrefix}.key("openai", openai.Ref()), layout{DefaultPrefix}.key("anthropic", anthropic.Ref())).Val() == 2
	})
}
