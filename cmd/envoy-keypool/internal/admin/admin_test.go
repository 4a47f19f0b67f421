package admin_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

const (
	token  = "test-admin-token"
	value1 = "test-admin-key-value-one-AAAA"
	value2 = "test-admin-key-value-two-BBBB"
)

func newServer(t *testing.T, tok string, ready func() error) (*httptest.Server, *atomic.Bool, *keypool.Pool) {
	t.Helper()
	clock := fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	pool, err := keypool.NewPool(keypool.PoolOptions{Name: "openai", Clock: clock, Keys: []keypool.Key{
		keypool.NewKey("openai", "one", value1), keypool.NewKey("openai", "two", value2),
	}})
	if err != nil {
		t.Fatal(err)
	}
	pools := []admin.Pool{{Pool: pool, Provider: "openai"}}
	reg := prometheus.NewRegistry()
	reg.MustRegister(admin.NewKeyStateCollector(pools))
	var draining atomic.Bool
	h := admin.NewHandler(admin.Options{Pools: pools, Token: tok, Gatherer: reg, Ready: ready, Draining: draining.Load})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, &draining, pool
}

func do(t *testing.T, method, url, tok string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, v := range []string{value1, value2} {
		if strings.Contains(string(b), v) {
			t.Errorf("%s %s shows a key value", method, url)
		}
	}
	return resp.StatusCode, string(b)
}

func TestKeyAPIAuth(t *testing.T) {
	srv, _, _ := newServer(t, token, nil)
	tests := []struct {
		name, method, path, token string
		want                      int
	}{
		{"list without token", "GET", "/v1/keys", "", 401},
		{"list with wrong token", "GET", "/v1/keys", "nope", 401},
		{"list", "GET", "/v1/keys", token, 200},
		{"disable without token", "POST", "/v1/pools/openai/keys/one/disable", "", 401},
		{"unknown pool", "POST", "/v1/pools/nope/keys/one/disable", token, 404},
		{"unknown key", "POST", "/v1/pools/openai/keys/nope/enable", token, 404},
		{"bad duration", "POST", "/v1/pools/openai/keys/one/disable?for=forever", token, 400},
		{"metrics are open", "GET", "/metrics", "", 200},
		{"health is open", "GET", "/healthz", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, body := do(t, tt.method, srv.URL+tt.path, tt.token); code != tt.want {
				t.Errorf("status %d (%s), want %d", code, body, tt.want)
			}
		})
	}
}

func TestKeyAPIOffWithoutToken(t *testing.T) {
	srv, _, _ := newServer(t, "", nil)
	if code, body := do(t, "GET", srv.URL+"/v1/keys", "anything"); code != 403 || !strings.Contains(body, "admin.token") {
		t.Errorf("status %d %s, want 403 naming admin.token", code, body)
	}
}

type listing struct {
	Pools []struct {
		Name string
		Keys []struct {
			ID        string  `json:"id"`
			Hint      string  `json:"hint"`
			Available bool    `json:"available"`
			Reason    string  `json:"reason"`
			Remaining float64 `json:"cooling_seconds_remaining"`
		}
	}
}

func TestDisableAndEnable(t *testing.T) {
	srv, _, _ := newServer(t, token, nil)
	if code, body := do(t, "POST", srv.URL+"/v1/pools/openai/keys/one/disable?for=90s", token); code != 200 {
		t.Fatalf("disable: %d %s", code, body)
	}
	_, body := do(t, "GET", srv.URL+"/v1/keys", token)
	var l listing
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatal(err)
	}
	k := l.Pools[0].Keys[0]
	if k.ID != "one" || k.Available || k.Reason != "disabled" || k.Remaining != 90 || k.Hint != "…AAAA" {
		t.Errorf("after disable: %+v", k)
	}
	_, metrics := do(t, "GET", srv.URL+"/metrics", "")
	for _, want := range []string{
		`envoy_keypool_key_available{key="one",pool="openai"} 0`,
		`envoy_keypool_key_available{key="two",pool="openai"} 1`,
		`envoy_keypool_key_cooldown_seconds{key="one",pool="openai",reason="disabled"} 90`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if code, body := do(t, "POST", srv.URL+"/v1/pools/openai/keys/one/enable", token); code != 200 {
		t.Fatalf("enable: %d %s", code, body)
	}
	_, body = do(t, "GET", srv.URL+"/v1/keys", token)
	l = listing{}
	if err := json.Unmarshal([]byte(body), &l); err != nil || !l.Pools[0].Keys[0].Available {
		t.Errorf("after enable: %s", body)
	}
}

func TestReadiness(t *testing.T) {
	var degraded atomic.Pointer[error]
	srv, draining, _ := newServer(t, token, func() error {
		if e := degraded.Load(); e != nil {
			return *e
		}
		return nil
	})
	if code, body := do(t, "GET", srv.URL+"/readyz", ""); code != 200 || !strings.Contains(body, `"ready"`) {
		t.Errorf("healthy: %d %s", code, body)
	}
	reason := errors.New("redis unreachable since 12:00:00")
	degraded.Store(&reason)
	code, body := do(t, "GET", srv.URL+"/readyz", "")
	if code != 200 || !strings.Contains(body, `"degraded"`) || !strings.Contains(body, "redis unreachable") {
		t.Errorf("degraded: %d %s, want 200 saying degraded and why", code, body)
	}
	draining.Store(true)
	if code, body := do(t, "GET", srv.URL+"/readyz", ""); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("draining: %d %s, want 503", code, body)
	}
}
