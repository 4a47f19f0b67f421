package testredis_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
)

func TestStartServesOnAFreePort(t *testing.T) {
	a := testredis.Start(t)
	b := testredis.Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("two servers share %s", a.Addr())
	}
	ctx := context.Background()
	if err := a.Client().Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Client().Exists(ctx, "k").Result(); err != nil || got != 0 {
		t.Fatalf("second server sees the first one's key: exists=%d err=%v", got, err)
	}
	opt, err := redis.ParseURL(a.URL())
	if err != nil || opt.Addr != a.Addr() {
		t.Fatalf("URL %q does not name %s: %v", a.URL(), a.Addr(), err)
	}
}

func TestRestartComesBackEmptyOnTheSamePort(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	c := srv.Client()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()

	srv.Stop()
	if srv.Running() {
		t.Fatal("Running after Stop")
	}
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered by a stopped server")
	}

	srv.Restart()
	if srv.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", srv.Addr(), addr)
	}
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("after restart: exists=%d err=%v, want an empty server", n, err)
	}
}

func TestWithPasswordRequiresIt(t *testing.T) {
	srv := testredis.Start(t, testredis.WithPassword("test-redis-password"))
	ctx := context.Background()
	if err := srv.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("Client with the password: %v", err)
	}
	anon := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer anon.Close()
	if err := anon.Set(ctx, "k", "v", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("SET without password: err=%v, want NOAUTH", err)
	}
}

func TestWithClusterEnforcesHashSlots(t *testing.T) {
	srv := testredis.Start(t, testredis.WithCluster())
	ctx := context.Background()
	c := srv.Client()
	if err := c.MSet(ctx, "{p}:a", "1", "{p}:b", "2").Err(); err != nil {
		t.Fatalf("MSET in one slot: %v", err)
	}
	if err := c.MSet(ctx, "a", "1", "b", "2").Err(); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("MSET across slots: err=%v, want CROSSSLOT", err)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}})
	defer cc.Close()
	if err := cc.Set(ctx, "x", "y", 0).Err(); err != nil {
		t.Fatalf("cluster client: %v", err)
	}
	srv.Restart()
	if n, err := cc.Exists(ctx, "x").Result(); err != nil || n != 0 {
		t.Fatalf("after restart: exists=%d err=%v, want an empty cluster", n, err)
	}
}

// recorder is a testing.TB that records failures instead of failing.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func TestAssertNoSecretsFindsASecretInEveryType(t *testing.T) {
	const secret = "test-key-value-aaaaaaaaaaaaaaaa"
	ctx := context.Background()
	tests := []struct {
		name  string
		store func(c *redis.Client) error
	}{
		{"key name", func(c *redis.Client) error { return c.Set(ctx, "p:"+secret, "x", 0).Err() }},
		{"string", func(c *redis.Client) error { return c.Set(ctx, "k", "v="+secret, 0).Err() }},
		{"hash field", func(c *redis.Client) error { return c.HSet(ctx, "k", secret, "x").Err() }},
		{"hash value", func(c *redis.Client) error { return c.HSet(ctx, "k", "f", secret).Err() }},
		{"set", func(c *redis.Client) error { return c.SAdd(ctx, "k", "a", secret).Err() }},
		{"zset", func(c *redis.Client) error { return c.ZAdd(ctx, "k", redis.Z{Score: 1, Member: secret}).Err() }},
		{"list", func(c *redis.Client) error { return c.RPush(ctx, "k", "a", secret).Err() }},
		{"stream", func(c *redis.Client) error {
			return c.XAdd(ctx, &redis.XAddArgs{Stream: "k", Values: []string{"f", secret}}).Err()
		}},
		{"other database", func(c *redis.Client) error {
			db3 := redis.NewClient(&redis.Options{Addr: c.Options().Addr, DB: 3})
			defer db3.Close()
			return db3.Set(ctx, "k", secret, 0).Err()
		}},
	}
	srv := testredis.Start(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := srv.Client()
			if err := c.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			if err := tt.store(c); err != nil {
				t.Fatal(err)
			}
			rec := &recorder{TB: t}
			if n := srv.AssertNoSecrets(rec, secret); n != 1 {
				t.Errorf("inspected %d keys, want 1", n)
			}
			if len(rec.errors) != 1 {
				t.Fatalf("failures = %q, want exactly one", rec.errors)
			}
			if strings.Contains(rec.errors[0], secret) {
				t.Errorf("failure message prints the secret: %s", rec.errors[0])
			}
		})
	}
}

func TestAssertNoSecretsPassesCleanData(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	c := srv.Client()
	if err := c.HSet(ctx, "pool:{openai}", "key-1#0a1b2c", "1700000000000 rate_limited").Err(); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{TB: t}
	if n := srv.AssertNoSecrets(rec, "test-key-value-aaaaaaaaaaaaaaaa"); n != 1 || len(rec.errors) != 0 {
		t.Fatalf("inspected %d keys, failures %q; want 1 key, no failure", n, rec.errors)
	}
}

func TestCounterCountsRoundTripsAndCommands(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	var n testredis.Counter
	c.AddHook(&n)

	if err := c.Set(ctx, "a", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	pipe := c.Pipeline()
	pipe.Get(ctx, "a")
	pipe.Exists(ctx, "b")
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if got := n.RoundTrips(); got != 2 {
		t.Errorf("round trips = %d, want 2 (one command, one pipeline)", got)
	}
	if got, want := strings.Join(n.Commands(), ","), "set,get,exists"; got != want {
		t.Errorf("commands = %s, want %s", got, want)
	}
	n.Reset()
	if n.RoundTrips() != 0 || len(n.Commands()) != 0 {
		t.Error("Reset kept counts")
	}
}

func TestProxyDelaysOneCallInN(t *testing.T) {
	srv := testredis.Start(t)
	proxy := testredis.NewProxy(t, srv.Addr())
	const delay = 100 * time.Millisecond
	c := redis.NewClient(&redis.Options{Addr: proxy.Addr()})
	defer c.Close()
	ctx := context.Background()
	if err := c.Ping(ctx).Err(); err != nil { // the connection's handshake
		t.Fatal(err)
	}
	proxy.DelayEvery(5, delay)
	slow := 0
	for range 10 {
		start := time.Now()
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) >= delay {
			slow++
		}
	}
	if proxy.Delayed() != 2 || slow < 2 {
		t.Errorf("delayed %d calls, %d took %s or more; want 2 of 10", proxy.Delayed(), slow, delay)
	}
}
