package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
	"github.com/envoy-keypool/envoy-keypool/internal/stack"
	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
)

// startClusterTarget is startTarget with the state shared through a Redis
// Cluster of three masters and three replicas (state.redis.addrs, cluster:
// true). The local stack only: docker-compose.yml runs one Redis.
func startClusterTarget(t *testing.T) (*target, *testredis.Cluster) {
	t.Helper()
	if os.Getenv("KEYPOOL_E2E_TARGET") == "compose" {
		t.Skip("the compose stack runs a single Redis")
	}
	cluster := testredis.StartCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	opts := stack.Options{RepoRoot: repoRoot, KeypoolBinary: keypoolBinary, RedisAddrs: cluster.Addrs(), RedisCluster: true}
	if testing.Verbose() {
		opts.Log = &testLogWriter{t: t}
	}
	return launchStack(t, ctx, opts, cluster), cluster
}

// The failover scenarios on a Redis Cluster: a rate-limited key fails over and
// cools on every replica, then the master holding the pools' state is killed
// mid-load and no request fails; the replicas are ready again once the
// Cluster promoted its replica.
func TestFailoverOnARedisCluster(t *testing.T) {
	tg, cluster := startClusterTarget(t)

	t.Run("a rate-limited key fails over and cools on every replica", func(t *testing.T) {
		for _, c := range chatCases() {
			if c.name != c.pool {
				continue // one case per pool: the first marks key 1
			}
			tg.program(t, c.pool, 0, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "120"}})
			if err := tg.mock.ClearRequests(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			if text, err := c.chat(testCtx(t), tg); err != nil || text != mockprovider.ReplyText {
				t.Fatalf("%s: reply %q, %v; want the second key to serve", c.name, text, err)
			}
			want := tg.keyValue(c.pool, 0) + "," + tg.keyValue(c.pool, 1)
			if got := strings.Join(servedBy(t, tg), ","); got != want {
				t.Fatalf("%s: provider saw %d attempts, want key 1 then key 2", c.name, len(servedBy(t, tg)))
			}
			for i := range tg.adminURLs {
				// The model is known (the path's or the JSON body's): the rate limit
				// cools key 1 for that model, key-wide it stays available.
				waitFor(t, fmt.Sprintf("%s: replica %d to see key 1 cooling", c.name, i+1), 5*time.Second, func() bool {
					ks, err := tg.adminKeys(testCtx(t), i, c.pool)
					return err == nil && ks[tg.keys[c.pool][0].ID].cooling("rate_limited")
				})
			}
		}
	})

	t.Run("a master killed mid-load fails no request", func(t *testing.T) {
		// Key 1 of each pool fails: every request needs a mark and a shared read.
		for _, pool := range []string{"openai", "anthropic"} {
			if err := enableAll(testCtx(t), tg, pool); err != nil {
				t.Fatal(err)
			}
			tg.program(t, pool, 0, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "1"}})
		}
		l := startLoad(t, tg, 8)
		l.waitMore(t, 40)
		// The hash tag alone decides the slot, whatever the stack's prefix.
		cluster.KillMaster(cluster.MasterOf("{openai}"))
		l.waitMore(t, 80)
		if errs := l.finish().errs; len(errs) > 0 {
			t.Fatalf("%d requests failed across the master's failover; first: %v", len(errs), errs[0])
		}
		for i := range tg.adminURLs {
			waitFor(t, fmt.Sprintf("replica %d ready again", i+1), 10*time.Second, func() bool {
				return tg.readyz(i) == "ready"
			})
		}
	})
}

// enableAll enables every key of pool through the first replica's admin API.
func enableAll(ctx context.Context, tg *target, pool string) error {
	for _, k := range tg.keys[pool] {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, tg.adminURLs[0]+"/v1/pools/"+pool+"/keys/"+k.ID+"/enable", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+tg.adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("enable %s/%s: %s", pool, k.ID, resp.Status)
		}
	}
	return nil
}
