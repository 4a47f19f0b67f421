package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// cutOffState applies operator actions locally and reports, as redisstate does
// during a Redis outage, that the other replicas do not have them yet.
type cutOffState struct{ *keypool.MemoryState }

func (s cutOffState) Override(ctx context.Context, pool, ref string, c keypool.Cooldown) error {
	_ = s.MemoryState.Override(ctx, pool, ref, c)
	return &keypool.PendingError{Err: errors.New("redis unreachable")}
}

func TestKeyActionDuringAnOutageIsAppliedAndSaysSo(t *testing.T) {
	clock := fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	pool, err := keypool.NewPool(keypool.PoolOptions{Name: "openai", Clock: clock,
		State: cutOffState{keypool.NewMemoryState(clock, 0)},
		Keys:  []keypool.Key{keypool.NewKey("openai", "one", value1), keypool.NewKey("openai", "two", value2)}})
	if err != nil {
		t.Fatal(err)
	}
	pools := []admin.Pool{{Pool: pool, Provider: "openai"}}
	srv := httptest.NewServer(admin.NewHandler(admin.Options{Pools: pools, Token: token, Gatherer: prometheus.NewRegistry()}))
	t.Cleanup(srv.Close)

	tests := []struct {
		name, path    string
		wantAvailable bool
	}{
		{"disable", "/v1/pools/openai/keys/one/disable", false},
		{"enable", "/v1/pools/openai/keys/one/enable", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := do(t, "POST", srv.URL+tt.path, token)
			if code != 202 {
				t.Fatalf("status %d (%s), want 202: applied here, not yet shared", code, body)
			}
			var got struct {
				Status string
				Keys   []struct{ Available bool }
			}
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatal(err)
			}
			if got.Status != "applied_on_this_replica_pending_propagation" {
				t.Errorf("status %q, want applied_on_this_replica_pending_propagation", got.Status)
			}
			if got.Keys[0].Available != tt.wantAvailable {
				t.Errorf("key one available = %v in the answer, want %v: the change applies on this replica at once", got.Keys[0].Available, tt.wantAvailable)
			}
		})
	}
}
