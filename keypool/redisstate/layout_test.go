package redisstate

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func TestRedisHoldsRefsAndStatesOnly(t *testing.T) {
	srv := startRedis(t)
	s := newHealthyReplica(t, Options{URL: srv.URL(), RequestTTL: time.Minute})
	keys := testKeys("openai", 2)
	pool := newPool(t, "openai", keys, s, nil)
	ctx := context.Background()
	att := keypool.Attempt{RequestID: "req-42", Number: 1}
	pool.FailKey(ctx, att, keys[0], keypool.ReasonRateLimited, keypool.Hint{After: 30 * time.Second, Known: true})

	c := srv.Client()
	got, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	ref := keys[0].Ref()
	want := []string{
		"envoy-keypool:{openai}:cd:" + ref,
		"envoy-keypool:{openai}:idx",
		"envoy-keypool:{openai}:meta",
		"envoy-keypool:{openai}:req:req-42",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("keys = %q, want %q", got, want)
	}
	if ttl := c.PTTL(ctx, want[3]).Val(); ttl <= 59*time.Second || ttl > time.Minute {
		t.Errorf("tried set TTL = %s, want the request TTL 1m", ttl)
	}
	if members := c.SMembers(ctx, want[3]).Val(); !slices.Equal(members, []string{ref}) {
		t.Errorf("tried set = %q, want [%s]", members, ref)
	}
	if ttl := c.PTTL(ctx, want[1]).Val(); ttl <= 29*time.Second || ttl > 30*time.Second {
		t.Errorf("index TTL = %s, want the latest cooldown's 30s", ttl)
	}
	if ttl := c.PTTL(ctx, want[2]).Val(); ttl != -1 {
		t.Errorf("meta TTL = %s, want none", ttl)
	}
	if n := srv.AssertNoSecrets(t, testValues...); n != len(want) {
		t.Errorf("inspected %d keys, want %d", n, len(want))
	}
}

func TestPrefixSeparatesDeployments(t *testing.T) {
	srv := startRedis(t)
	blue1 := newHealthyReplica(t, Options{URL: srv.URL(), Prefix: "blue:"})
	green1 := newHealthyReplica(t, Options{URL: srv.URL(), Prefix: "green:"})
	green2 := newHealthyReplica(t, Options{URL: srv.URL(), Prefix: "green:"})
	keys := testKeys("openai", 2)
	ctx := context.Background()
	c := keypool.Cooldown{Until: time.Now().Add(time.Minute), Reason: keypool.ReasonRateLimited}

	blue1.MarkFailed(ctx, "openai", keys[0].Ref(), "req-1", c)
	// A mark published after blue's on green's channel: once green2 has it, it
	// would have had blue's too had they shared a channel.
	green1.MarkFailed(ctx, "openai", keys[1].Ref(), "", c)
	waitFor(t, "green2 sees green1's mark", func() bool { return green2.Cooldown("openai", keys[1].Ref()).ActiveAt(time.Now()) })
	if green2.Cooldown("openai", keys[0].Ref()).ActiveAt(time.Now()) {
		t.Error("green sees blue's notification")
	}
	view := green2.RequestView(ctx, "openai", []string{keys[0].Ref()}, "req-1")
	if len(view.Tried) != 0 || view.Cooldowns[keys[0].Ref()].ActiveAt(time.Now()) {
		t.Errorf("green reads blue's state: %+v", view)
	}
	for _, k := range srv.Client().Keys(ctx, "*").Val() {
		if !strings.HasPrefix(k, "blue:") && !strings.HasPrefix(k, "green:") {
			t.Errorf("key %q outside the deployments' prefixes", k)
		}
	}
}

func TestLongRequestIDsAreHashed(t *testing.T) {
	long := strings.Repeat("x", 500)
	got := layout{DefaultPrefix}.tried("openai", long)
	if len(got) > 200 || strings.Contains(got, long[:200]) {
		t.Errorf("tried key for a 500-byte request id = %q, want a bounded hash", got)
	}
	if (layout{DefaultPrefix}).tried("openai", long) != got {
		t.Error("hash of a request id not stable")
	}
}

func TestPoolOfMetaRoundTrips(t *testing.T) {
	l := layout{"p*:"}
	for _, pool := range []string{"openai", "a}b", "with:colons", "{x"} {
		if got, ok := l.poolOfMeta(l.meta(pool)); !ok || got != pool {
			t.Errorf("poolOfMeta(meta(%q)) = %q, %v", pool, got, ok)
		}
	}
	if got := l.metaPattern(); got != `p\*:{*}:meta` {
		t.Errorf("metaPattern = %q, want the prefix escaped", got)
	}
}
