package redisstate

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func TestNewRejectsInvalidOptions(t *testing.T) {
	client := redis.NewClient(&redis.Options{})
	defer client.Close()
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"timeout reaching Envoy's message_timeout", Options{Timeout: 200 * time.Millisecond}, "must be below 200ms"},
		{"negative timeout", Options{Timeout: -time.Millisecond}, "must be positive"},
		{"prefix with a hash tag", Options{Prefix: "a{b}:"}, "must not contain '{'"},
		{"url and addrs", Options{URL: "redis://localhost", Addrs: []string{"localhost:6379"}}, "set one of them"},
		{"url with sentinel", Options{URL: "redis://localhost", MasterName: "m"}, "url names one node"},
		{"cluster with sentinel", Options{Addrs: []string{"a:1"}, Cluster: true, MasterName: "m"}, "exclude each other"},
		{"cluster with a database", Options{Addrs: []string{"a:1"}, Cluster: true, DB: 2}, "only database 0"},
		{"client and url", Options{Client: client, URL: "redis://x"}, "not both"},
		{"bad url scheme", Options{URL: "http://localhost"}, "invalid URL scheme"},
		{"password twice", Options{URL: "redis://:test-redis-password@localhost", Password: "other"}, "password: set both"},
		{"negative request TTL", Options{RequestTTL: -time.Second}, "request TTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(context.Background(), tt.opts)
			if err == nil {
				s.Close()
				t.Fatalf("New succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New error = %q, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "test-redis-password") {
				t.Errorf("error shows the password: %q", err)
			}
		})
	}
}

func TestNewGathersEveryProblem(t *testing.T) {
	_, err := New(context.Background(), Options{Timeout: time.Second, Prefix: "{x}", RequestTTL: -1})
	if err == nil {
		t.Fatal("New succeeded")
	}
	for _, want := range []string{"timeout", "prefix", "request TTL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestConnectsWithEachConfiguration(t *testing.T) {
	const password = "test-redis-password"
	srv := startRedis(t, testredis.WithPassword(password))
	cluster := startRedis(t, testredis.WithCluster())
	tests := []struct {
		name string
		opts Options
	}{
		{"url with password in options", Options{URL: srv.URL(), Password: password}},
		{"url with password and database in the url", Options{URL: "redis://:" + password + "@" + srv.Addr() + "/3"}},
		{"addrs with password", Options{Addrs: []string{srv.Addr()}, Password: password, DB: 1}},
		{"cluster seed", Options{Addrs: []string{cluster.Addr()}, Cluster: true}},
		{"ready client", Options{Client: redis.NewClient(&redis.Options{Addr: srv.Addr(), Password: password, ContextTimeoutEnabled: true})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.opts.Client != nil {
				t.Cleanup(func() { tt.opts.Client.Close() })
			}
			s := newHealthyReplica(t, tt.opts)
			ref := testKeys("openai", 1)[0].Ref()
			c := keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonRateLimited}
			s.MarkFailed(context.Background(), "openai", ref, "r", c)
			if s.Ready() != nil {
				t.Fatalf("mark failed: %v", s.Ready())
			}
		})
	}
}

// aclRules is the least-privilege ACL the README recommends for the default
// prefix.
var aclRules = []any{"on", ">test-acl-password", "resetkeys", "~envoy-keypool:*", "resetchannels", "&envoy-keypool:*",
	"-@all", "+@read", "+@write", "+@scripting", "+@pubsub", "+@connection", "+time", "-@dangerous"}

func TestWorksWithALeastPrivilegeACLUser(t *testing.T) {
	srv := startRedis(t)
	ctx := context.Background()
	if err := srv.Client().Do(ctx, append([]any{"ACL", "SETUSER", "envoy-keypool"}, aclRules...)...).Err(); err != nil {
		t.Fatal(err)
	}
	opts := Options{URL: srv.URL(), Username: "envoy-keypool", Password: "test-acl-password"}
	a := newHealthyReplica(t, opts)
	b := newHealthyReplica(t, opts)
	keys := testKeys("openai", 2)
	pool := newPool(t, "openai", keys, a, nil)
	first := keypool.Attempt{RequestID: "r", Number: 1}
	pool.FailKey(ctx, first, keys[0], keypool.ReasonRateLimited, keypool.Hint{})
	if k, err := pool.Pick(ctx, keypool.Attempt{RequestID: "r", Number: 2}); err != nil || k.ID() != "key-2" {
		t.Fatalf("retry Pick = %v, %v", k, err)
	}
	waitFor(t, "B sees the mark", func() bool { return b.Cooldown("openai", keys[0].Ref()).ActiveAt(time.Now()) })
	if err := pool.Enable(ctx, "key-1"); err != nil {
		t.Fatal(err)
	}
	if a.Ready() != nil || b.Ready() != nil {
		t.Errorf("denied a command: A %v, B %v", a.Ready(), b.Ready())
	}
}

func TestRedissURLUsesTLS(t *testing.T) {
	o, err := Options{URL: "rediss://localhost:6380/0"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	c, err := o.newClient()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	opt := c.(*redis.Client).Options()
	if opt.TLSConfig == nil || opt.TLSConfig.ServerName != "localhost" {
		t.Errorf("rediss:// client TLS = %+v, want TLS to localhost", opt.TLSConfig)
	}
	if !opt.ContextTimeoutEnabled || opt.ReadTimeout != DefaultTimeout {
		t.Errorf("client timeouts: context %v, read %s; want context deadlines and %s", opt.ContextTimeoutEnabled, opt.ReadTimeout, DefaultTimeout)
	}
}

func TestMetricsRegisterOnce(t *testing.T) {
	srv := startRedis(t)
	reg := prometheus.NewRegistry()
	s, err := New(context.Background(), Options{URL: srv.URL(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := New(context.Background(), Options{URL: srv.URL(), Registerer: reg}); err == nil {
		t.Error("a second State registered the same metrics without error")
	}
}

func TestCloseStopsEveryGoroutine(t *testing.T) {
	srv := startRedis(t)
	before := runtime.NumGoroutine()
	s, err := New(context.Background(), Options{URL: srv.URL()})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "healthy", s.Healthy)
	ctx := context.Background()
	ref := testKeys("openai", 1)[0].Ref()
	s.MarkFailed(ctx, "openai", ref, "r", keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonRateLimited})
	s.RequestView(ctx, "openai", []string{ref}, "r")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	waitFor(t, "goroutines back to their number before New", func() bool { return runtime.NumGoroutine() <= before })

	// A closed State still answers, from its local view, without logging an outage.
	if !s.Cooldown("openai", ref).ActiveAt(time.Now()) {
		t.Error("closed State forgot its view")
	}
	if v := s.RequestView(ctx, "openai", []string{ref}, "r"); len(v.Tried) != 1 {
		t.Errorf("closed State's RequestView = %+v, want the local tried key", v)
	}
	if err := s.Override(ctx, "openai", ref, keypool.Cooldown{}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Override after Close = %v, want ErrUnavailable", err)
	}
}

func TestCloseDoesNotCloseACallersClient(t *testing.T) {
	srv := startRedis(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer client.Close()
	s, err := New(context.Background(), Options{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := client.Ping(context.Background()).Err(); err != nil {
		t.Errorf("caller's client closed by Close: %v", err)
	}
}
