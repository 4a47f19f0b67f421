package admin_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// A pool of 1,000 keys, all but the last taken out: the next request gets the last
// key, the admin API lists every key in priority order, and the key-state metrics
// hold a fixed number of series per key (the cardinality the README documents).
func TestAThousandKeyPoolIsServedListedAndMeteredPerKey(t *testing.T) {
	const n = 1000
	clock := fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	keys := make([]keypool.Key, n)
	for i := range keys {
		keys[i] = keypool.NewKey("big", fmt.Sprintf("k%04d", i+1), fmt.Sprintf("many-keys-test-value-not-real-%04d", i+1))
	}
	pool, err := keypool.NewPool(keypool.PoolOptions{Name: "big", Clock: clock, State: keypool.NewMemoryState(clock, 0), Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, k := range keys[:n-1] {
		if _, err := pool.Disable(ctx, k.ID(), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	pk, err := pool.Pick(ctx, keypool.Attempt{RequestID: "r1", Number: 1})
	if err != nil {
		t.Fatalf("pick with one usable key of %d: %v", n, err)
	}
	if pk.ID() != keys[n-1].ID() {
		t.Fatalf("picked %s, want the only usable key %s", pk.ID(), keys[n-1].ID())
	}

	pools := []admin.Pool{{Pool: pool, Provider: "openai"}}
	reg := prometheus.NewRegistry()
	reg.MustRegister(admin.NewKeyStateCollector(pools))
	srv := httptest.NewServer(admin.NewHandler(admin.Options{Pools: pools, Token: token, Gatherer: reg}))
	t.Cleanup(srv.Close)
	f := &keysFixture{url: srv.URL, clock: clock, pool: pool, reg: reg}
	listed := f.keys(t).Pools[0].Keys
	if len(listed) != n {
		t.Fatalf("GET /v1/keys lists %d keys, want %d", len(listed), n)
	}
	for i, k := range listed {
		if k.ID != keys[i].ID() {
			t.Fatalf("key %d listed as %s, want %s (priority order)", i, k.ID, keys[i].ID())
		}
		if want := i == n-1; k.Available != want {
			t.Fatalf("key %s available=%v, want %v", k.ID, k.Available, want)
		}
	}

	body := scrape(t, reg)
	series := map[string]int{ // by family, whatever the traffic
		"envoy_keypool_key_available{":        n,
		"envoy_keypool_key_phase{":            3 * n, // available, cooling, probing
		"envoy_keypool_key_model_scopes{":     2 * n, // cooling, probing: models are counted, never labels
		"envoy_keypool_key_cooldown_seconds{": n - 1, // one per cooling key
	}
	for family, want := range series {
		if got := strings.Count(body, "\n"+family); got != want {
			t.Errorf("%s: %d series for %d keys, want %d", strings.TrimSuffix(family, "{"), got, n, want)
		}
	}
	for _, k := range keys[:3] {
		if strings.Contains(body, k.Value()) {
			t.Fatal("a key value appears in the metrics")
		}
	}
}
