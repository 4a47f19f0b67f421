package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// unreachableState is in-memory state whose operator overrides apply locally but
// report that the shared state is out of reach, as Redis state does in an outage.
type unreachableState struct{ *keypool.MemoryState }

func (s unreachableState) Override(ctx context.Context, pool, ref string, c keypool.Cooldown) error {
	if err := s.MemoryState.Override(ctx, pool, ref, c); err != nil {
		return err
	}
	return &keypool.PendingError{Err: errors.New("redis: connection refused")}
}

type keysFixture struct {
	url   string
	clock *fakeclock.Clock
	pool  *keypool.Pool
	reg   *prometheus.Registry
}

func newKeysFixture(t *testing.T, state func(keypool.Clock) keypool.State) *keysFixture {
	t.Helper()
	clock := fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	pool, err := keypool.NewPool(keypool.PoolOptions{Name: "openai", Clock: clock, State: state(clock), Keys: []keypool.Key{
		keypool.NewKey("openai", "one", value1), keypool.NewKey("openai", "two", value2),
	}})
	if err != nil {
		t.Fatal(err)
	}
	pools := []admin.Pool{{Pool: pool, Provider: "openai"}}
	reg := prometheus.NewRegistry()
	reg.MustRegister(admin.NewKeyStateCollector(pools))
	srv := httptest.NewServer(admin.NewHandler(admin.Options{Pools: pools, Token: token, Gatherer: reg}))
	t.Cleanup(srv.Close)
	return &keysFixture{url: srv.URL, clock: clock, pool: pool, reg: reg}
}

func memoryState(c keypool.Clock) keypool.State { return keypool.NewMemoryState(c, 0) }

// fail makes one attempt of a request fail on the pool's first usable key.
func (f *keysFixture) fail(t *testing.T, id, model string, class keypool.Class, hint time.Duration) keypool.Outcome {
	t.Helper()
	a := keypool.Attempt{RequestID: id, Number: 1, Model: model}
	pk, err := f.pool.Pick(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	return f.pool.Fail(context.Background(), a, pk, keypool.Failure{Class: class, Status: 429,
		Hint: keypool.Hint{After: hint, Known: hint > 0}})
}

type keysJSON struct {
	Pools []struct {
		Name, Strategy string
		Keys           []struct {
			ID, Hint, Phase, Reason string
			Available               bool
			Remaining               float64    `json:"cooling_seconds_remaining"`
			Span                    float64    `json:"cooldown_seconds"`
			ProbeUntil              *time.Time `json:"probe_until"`
			Models                  []struct{ Model, Phase, Reason string }
			LastFailure             *struct {
				Class, Action, Model string
				Status               int
			} `json:"last_failure"`
		}
	}
}

func (f *keysFixture) keys(t *testing.T) keysJSON {
	t.Helper()
	code, body := do(t, http.MethodGet, f.url+"/v1/keys", token)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/keys: %d %s", code, body)
	}
	var out keysJSON
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestKeyAPIShowsScopesProbingAndTheLastFailure(t *testing.T) {
	f := newKeysFixture(t, memoryState)
	f.fail(t, "r1", "gpt-4o", keypool.ClassRateLimited, 20*time.Second) // key one, for gpt-4o only
	f.fail(t, "r2", "", keypool.ClassQuota, 0)                          // key one, key-wide
	got := f.keys(t).Pools[0]
	if got.Strategy != "priority" {
		t.Errorf("strategy %q, want priority", got.Strategy)
	}
	one := got.Keys[0]
	if one.Phase != "cooling" || one.Reason != "quota" || one.Available || one.Remaining != 3600 || one.Span != 3600 {
		t.Errorf("key one key-wide: %+v, want cooling for quota, 3600s left", one)
	}
	if len(one.Models) != 1 || one.Models[0].Model != "gpt-4o" || one.Models[0].Phase != "cooling" || one.Models[0].Reason != "rate_limited" {
		t.Errorf("key one models: %+v, want gpt-4o cooling for rate_limited", one.Models)
	}
	if lf := one.LastFailure; lf == nil || lf.Class != "quota" || lf.Action != "cool" || lf.Status != 429 {
		t.Errorf("key one last failure: %+v, want quota/cool/429", lf)
	}
	if two := got.Keys[1]; two.Phase != "available" || !two.Available || two.LastFailure != nil || len(two.Models) != 0 {
		t.Errorf("key two: %+v, want available with nothing to show", two)
	}

	// The quota cooldown ends: the key is probed, one request at a time.
	f.clock.Advance(time.Hour)
	a := keypool.Attempt{RequestID: "probe", Number: 1}
	pk, err := f.pool.Pick(context.Background(), a)
	if err != nil || !pk.Probing() {
		t.Fatalf("pick after the cooldown: probing %v, %v; want a probe", pk.Probing(), err)
	}
	one = f.keys(t).Pools[0].Keys[0]
	if one.Phase != "probing" || one.Available || one.ProbeUntil == nil {
		t.Errorf("key one during its probe: %+v, want probing with the probe's deadline", one)
	}
	f.pool.Finish(context.Background(), a, pk, keypool.Headroom{})
	if one = f.keys(t).Pools[0].Keys[0]; one.Phase != "available" || !one.Available {
		t.Errorf("key one after a successful probe: %+v, want available", one)
	}
}

func TestKeyActionDuringASharedStateOutageIsAppliedHereAndSaysSo(t *testing.T) {
	tests := []struct {
		name     string
		state    func(keypool.Clock) keypool.State
		wantCode int
		wantProp string
	}{
		{"shared state reachable", memoryState, http.StatusOK, "done"},
		{"shared state unreachable", func(c keypool.Clock) keypool.State { return unreachableState{keypool.NewMemoryState(c, 0)} },
			http.StatusAccepted, "pending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newKeysFixture(t, tt.state)
			code, body := do(t, http.MethodPost, f.url+"/v1/pools/openai/keys/one/disable", token)
			var resp struct {
				Propagation string
				Message     string
			}
			if err := json.Unmarshal([]byte(body), &resp); err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode || resp.Propagation != tt.wantProp {
				t.Fatalf("disable: %d %s, want %d with propagation %s", code, body, tt.wantCode, tt.wantProp)
			}
			if tt.wantProp == "pending" && !strings.Contains(resp.Message, "applied on this replica") {
				t.Errorf("pending answer does not say where it applies: %q", resp.Message)
			}
			// Applied here either way: the next pick skips the key.
			pk, err := f.pool.Pick(context.Background(), keypool.Attempt{RequestID: "r", Number: 1})
			if err != nil || pk.ID() != "two" {
				t.Fatalf("pick after disable: %v, %v; want key two", pk.ID(), err)
			}
			if code, body := do(t, http.MethodPost, f.url+"/v1/pools/openai/keys/one/enable", token); code != tt.wantCode {
				t.Fatalf("enable: %d %s, want %d", code, body, tt.wantCode)
			}
		})
	}
}

func TestKeyStateMetricsAreBoundedByTheConfiguration(t *testing.T) {
	f := newKeysFixture(t, memoryState)
	// Many models from clients: none of them becomes a label.
	for i, m := range []string{"gpt-4o", "gpt-4o-mini", "o3", "made-up-model-" + strings.Repeat("x", 200)} {
		f.fail(t, "r"+m, m, keypool.ClassRateLimited, time.Duration(10+i)*time.Second)
	}
	srvBody := scrape(t, f.reg)
	for _, m := range []string{"gpt-4o", "o3", "made-up-model"} {
		if strings.Contains(srvBody, m) {
			t.Errorf("model %q appears in the metrics", m)
		}
	}
	for _, want := range []string{
		`envoy_keypool_key_model_scopes{key="one",phase="cooling",pool="openai"} 4`,
		`envoy_keypool_key_phase{key="one",phase="available",pool="openai"} 1`,
		`envoy_keypool_key_phase{key="one",phase="cooling",pool="openai"} 0`,
		`envoy_keypool_key_available{key="two",pool="openai"} 1`,
	} {
		if !strings.Contains(srvBody, want) {
			t.Errorf("metrics lack %s\n%s", want, srvBody)
		}
	}
	for _, v := range []string{value1, value2} {
		if strings.Contains(srvBody, v) {
			t.Error("a key value appears in the metrics")
		}
	}
}

func scrape(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	srv := httptest.NewServer(admin.NewHandler(admin.Options{Gatherer: g}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
