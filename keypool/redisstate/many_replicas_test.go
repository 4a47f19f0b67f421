package redisstate

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Eight replicas of one Redis and a pool of 1,000 keys: every mark made on any
// replica reaches the local view of all the others, and each replica's view then
// holds exactly the scopes that were marked (nothing of the other 1,000 keys is
// copied in). BenchmarkMarkVisibility measures the delay; this test holds the rule.
func TestEightReplicasSeeEveryMarkOnAThousandKeyPool(t *testing.T) {
	srv := startRedis(t)
	const replicas, marks = 8, 40
	rs := make([]*replica, replicas)
	for i := range rs {
		rs[i] = newHealthyReplica(t, Options{URL: srv.URL()})
	}
	keys := testKeys("openai", 1000)
	ctx := context.Background()
	want := map[string]keypool.Cooldown{}
	for i := range marks {
		// Spread over the pool and over the replicas.
		ref := keys[(i*997)%len(keys)].Ref()
		c := keypool.Cooldown{Until: time.Now().Add(time.Hour + time.Duration(i)*time.Second), Reason: keypool.ReasonRateLimited}
		rs[i%replicas].Mark(ctx, "openai", keypool.Mark{Scope: keypool.Scope{Ref: ref}, Cooldown: c, Span: time.Hour})
		want[ref] = c
	}
	for i, r := range rs {
		waitFor(t, fmt.Sprintf("replica %d to see all %d marks", i+1, marks), func() bool {
			for ref, c := range want {
				if !sameCooldown(r.Cooldown("openai", ref), c) {
					return false
				}
			}
			return true
		})
		v := r.View("openai")
		if v == nil {
			t.Fatalf("replica %d: no view of the pool", i+1)
		}
		if len(v.Entries) != marks {
			t.Fatalf("replica %d: view holds %d scopes, want the %d marked", i+1, len(v.Entries), marks)
		}
	}
}
