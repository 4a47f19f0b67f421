package redisstate

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func TestMarkOnOneReplicaIsSeenByTheOther(t *testing.T) {
	for _, topo := range topologies() {
		t.Run(topo.name, func(t *testing.T) {
			srv := startRedis(t, topo.server...)
			a := newHealthyReplica(t, topo.options(srv))
			b := newHealthyReplica(t, topo.options(srv))
			key := testKeys("openai", 1)[0]
			c := keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonRateLimited}

			got := a.MarkFailed(context.Background(), "openai", key.Ref(), "req-1", c)
			if !sameCooldown(got, c) {
				t.Fatalf("MarkFailed = %+v, want %+v", got, c)
			}
			if !sameCooldown(a.Cooldown("openai", key.Ref()), c) {
				t.Errorf("marking replica's own view = %+v, want %+v", a.Cooldown("openai", key.Ref()), c)
			}
			waitFor(t, "replica B sees the mark", func() bool {
				return sameCooldown(b.Cooldown("openai", key.Ref()), c)
			})
		})
	}
}

func TestCooldownEndsOnBothReplicas(t *testing.T) {
	t.Run("when its TTL passes in real time", func(t *testing.T) {
		srv := startRedis(t)
		a := newHealthyReplica(t, Options{URL: srv.URL()})
		b := newHealthyReplica(t, Options{URL: srv.URL()})
		key := testKeys("openai", 1)[0]
		ctx := context.Background()
		c := keypool.Cooldown{Until: time.Now().Add(300 * time.Millisecond), Reason: keypool.ReasonRateLimited}
		a.MarkFailed(ctx, "openai", key.Ref(), "", c)

		cdKey := layout{DefaultPrefix}.cooldown("openai", key.Ref())
		ttl, err := srv.Client().PTTL(ctx, cdKey).Result()
		if err != nil || ttl <= 0 || ttl > 300*time.Millisecond {
			t.Fatalf("PTTL %s = %s, %v; want the remaining cooldown (0, 300ms]", cdKey, ttl, err)
		}
		waitFor(t, "B sees the mark", func() bool { return b.Cooldown("openai", key.Ref()).ActiveAt(time.Now()) })
		waitFor(t, "the cooldown ended on both replicas and in Redis", func() bool {
			now := time.Now()
			n, _ := srv.Client().Exists(ctx, cdKey).Result()
			return !a.Cooldown("openai", key.Ref()).ActiveAt(now) && !b.Cooldown("openai", key.Ref()).ActiveAt(now) && n == 0
		})
	})

	t.Run("when the clock passes its deadline, whatever the TTL", func(t *testing.T) {
		srv := startRedis(t)
		clock := newFakeClock()
		a := newHealthyReplica(t, Options{URL: srv.URL(), Clock: clock})
		b := newHealthyReplica(t, Options{URL: srv.URL(), Clock: clock})
		keys := testKeys("openai", 2)
		poolA := newPool(t, "openai", keys, a, clock)
		poolB := newPool(t, "openai", keys, b, clock)
		ctx := context.Background()

		c := poolA.FailKey(ctx, keypool.Attempt{RequestID: "r1", Number: 1}, keys[0], keypool.ReasonRateLimited,
			keypool.Hint{After: time.Hour, Known: true})
		waitFor(t, "B sees the mark", func() bool { return sameCooldown(b.Cooldown("openai", keys[0].Ref()), c) })
		for name, p := range map[string]*keypool.Pool{"A": poolA, "B": poolB} {
			if k, err := p.Pick(ctx, keypool.Attempt{RequestID: "r2", Number: 1}); err != nil || k.ID() != "key-2" {
				t.Fatalf("%s during the cooldown: Pick = %v, %v; want key-2", name, k, err)
			}
		}

		clock.Advance(time.Hour + time.Millisecond)
		for name, p := range map[string]*keypool.Pool{"A": poolA, "B": poolB} {
			for _, attempt := range []keypool.Attempt{{RequestID: "r3", Number: 1}, {RequestID: "r3", Number: 2}} {
				k, err := p.Pick(ctx, attempt)
				if err != nil || k.ID() != "key-1" {
					t.Errorf("%s after the cooldown, attempt %d: Pick = %v, %v; want key-1", name, attempt.Number, k, err)
				}
				// The first pick after a cooldown probes the key; its success
				// returns the key to everyone (keypool State v2).
				p.Finish(ctx, attempt, k, keypool.Headroom{})
			}
		}
	})
}

func TestMarkNeverShortensALaterDeadline(t *testing.T) {
	for _, topo := range topologies() {
		t.Run(topo.name, func(t *testing.T) {
			srv := startRedis(t, topo.server...)
			a := newHealthyReplica(t, topo.options(srv))
			b := newHealthyReplica(t, topo.options(srv))
			ref := testKeys("openai", 1)[0].Ref()
			ctx := context.Background()
			now := time.Now()
			long := keypool.Cooldown{Until: now.Add(10 * time.Minute), Reason: keypool.ReasonUnauthorized}
			short := keypool.Cooldown{Until: now.Add(time.Minute), Reason: keypool.ReasonRateLimited}

			a.MarkFailed(ctx, "openai", ref, "", long)
			if got := b.MarkFailed(ctx, "openai", ref, "", short); !sameCooldown(got, long) {
				t.Errorf("B's shorter mark returned %+v, want the longer one in force %+v", got, long)
			}
			for name, r := range map[string]*replica{"A": a, "B": b} {
				waitFor(t, name+" holds the longer cooldown", func() bool { return sameCooldown(r.Cooldown("openai", ref), long) })
			}
			raw, err := srv.Client().Get(ctx, layout{DefaultPrefix}.cooldown("openai", ref)).Result()
			st, ok := parseStored(raw)
			if err != nil || !ok || !sameCooldown(st.c, long) {
				t.Errorf("Redis holds %q (%v), want the longer cooldown", raw, err)
			}
			ttl, _ := srv.Client().PTTL(ctx, layout{DefaultPrefix}.cooldown("openai", ref)).Result()
			if ttl < 9*time.Minute {
				t.Errorf("TTL = %s after a shorter mark, want the longer cooldown's", ttl)
			}
		})
	}
}

func TestOverrideReplacesStateOnEveryReplica(t *testing.T) {
	srv := startRedis(t)
	a := newHealthyReplica(t, Options{URL: srv.URL()})
	b := newHealthyReplica(t, Options{URL: srv.URL()})
	keys := testKeys("openai", 2)
	poolA := newPool(t, "openai", keys, a, nil)
	poolB := newPool(t, "openai", keys, b, nil)
	ctx := context.Background()
	ref := keys[0].Ref()

	a.MarkFailed(ctx, "openai", ref, "", keypool.Cooldown{Until: time.Now().Add(time.Hour), Reason: keypool.ReasonUnauthorized})
	waitFor(t, "B sees the mark", func() bool { return b.Cooldown("openai", ref).ActiveAt(time.Now()) })

	if err := poolB.Enable(ctx, "key-1"); err != nil {
		t.Fatalf("Enable: %v", err)
	}
	waitFor(t, "A sees the key enabled", func() bool { return !a.Cooldown("openai", ref).ActiveAt(time.Now()) })

	disabled, err := poolA.Disable(ctx, "key-2", 0)
	if err != nil {
		t.Fatalf("Disable: %v", err)
	}
	waitFor(t, "B sees the key disabled", func() bool {
		return sameCooldown(b.Cooldown("openai", keys[1].Ref()), disabled)
	})
	if k, err := poolB.Pick(ctx, keypool.Attempt{RequestID: "r", Number: 1}); err != nil || k.ID() != "key-1" {
		t.Errorf("Pick = %v, %v; want key-1", k, err)
	}
}

func TestRetryNeverReusesAKeyFailedOnAnotherReplica(t *testing.T) {
	for _, topo := range topologies() {
		t.Run(topo.name, func(t *testing.T) {
			srv := startRedis(t, topo.server...)
			a := newHealthyReplica(t, topo.options(srv))
			missed := make(chan string, 1)
			optsB := topo.options(srv)
			optsB.testHooks = &testHooks{dropNotification: func(payload string) bool {
				select {
				case missed <- payload:
				default:
				}
				return true
			}}
			b := newHealthyReplica(t, optsB)
			keys := testKeys("openai", 3)
			poolA := newPool(t, "openai", keys, a, nil)
			poolB := newPool(t, "openai", keys, b, nil)
			ctx := context.Background()

			first := keypool.Attempt{RequestID: "req-7", Number: 1}
			k, err := poolA.Pick(ctx, first)
			if err != nil || k.ID() != "key-1" {
				t.Fatalf("attempt 1 on A: Pick = %v, %v; want key-1", k, err)
			}
			// A 403 gives a short cooldown; the request must still not get key-1 again.
			poolA.FailKey(ctx, first, k.Key, keypool.ReasonForbidden, keypool.Hint{})
			<-missed
			if b.Cooldown("openai", k.Ref()).ActiveAt(time.Now()) {
				t.Fatal("B saw the notification it should have missed")
			}

			second := keypool.Attempt{RequestID: "req-7", Number: 2}
			got, err := poolB.Pick(ctx, second)
			if err != nil {
				t.Fatalf("attempt 2 on B: %v", err)
			}
			if got.ID() == "key-1" {
				t.Fatal("attempt 2 on B reused key-1, which failed for this request on A")
			}
			// keypool State v2: a retry reads the request's tried set only; the
			// notification B missed no longer reaches its view through the retry.

			// Once the cooldown ends the key may serve others, never this request.
			if err := poolA.Enable(ctx, "key-1"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "B sees key-1 enabled", func() bool {
				v := b.RequestView(ctx, "openai", []string{k.Ref()}, "")
				return !v.Cooldowns[k.Ref()].ActiveAt(time.Now())
			})
			third := keypool.Attempt{RequestID: "req-7", Number: 3}
			poolB.FailKey(ctx, second, got.Key, keypool.ReasonRateLimited, keypool.Hint{})
			if again, err := poolB.Pick(ctx, third); err != nil || again.ID() != "key-3" {
				t.Errorf("attempt 3: Pick = %v, %v; want key-3 (key-1 and key-2 already failed for it)", again, err)
			}
			fourth := keypool.Attempt{RequestID: "req-7", Number: 4}
			poolA.FailKey(ctx, third, keys[2], keypool.ReasonRateLimited, keypool.Hint{})
			var exhausted *keypool.ExhaustedError
			if _, err := poolA.Pick(ctx, fourth); !errors.As(err, &exhausted) {
				t.Errorf("attempt 4: err = %v, want exhaustion: every key failed for this request", err)
			}
		})
	}
}
