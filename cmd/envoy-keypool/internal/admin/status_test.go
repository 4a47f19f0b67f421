package admin_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func newStatusServer(t *testing.T, page bool) (*httptest.Server, *keypool.Pool, *fakeclock.Clock) {
	t.Helper()
	clock := fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	pool, err := keypool.NewPool(keypool.PoolOptions{Name: "openai", Clock: clock, Keys: []keypool.Key{
		keypool.NewKey("openai", "one", value1), keypool.NewKey("openai", "two", value2),
		keypool.NewKey("openai", "three", "test-admin-key-value-three-CCCC"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	started := time.Date(2026, 11, 25, 11, 0, 0, 0, time.UTC)
	h := admin.NewHandler(admin.Options{
		Pools: []admin.Pool{{Pool: pool, Provider: "openai"}}, Token: token, StatusPage: page, Clock: clock,
		Info: func() admin.ProcessInfo {
			return admin.ProcessInfo{Version: "v9.9.9-test", StateBackend: "memory", Started: started, ConfigLoaded: started}
		},
		LastStatus: func(p, id string) (admin.LastStatus, bool) {
			if p == "openai" && id == "one" {
				return admin.LastStatus{Code: 429, At: clock.Now().Add(-3 * time.Second)}, true
			}
			return admin.LastStatus{}, false
		},
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, pool, clock
}

func TestStatusPageShowsEachKeysStateAndNoSecret(t *testing.T) {
	srv, pool, _ := newStatusServer(t, true)
	ctx := context.Background()
	pool.FailKey(ctx, keypool.Attempt{RequestID: "r", Number: 1}, pool.Status()[0].Key, keypool.ReasonRateLimited,
		keypool.Hint{After: 90 * time.Second, Known: true})
	if _, err := pool.Disable(ctx, "three", time.Hour); err != nil {
		t.Fatal(err)
	}
	code, body := do(t, "GET", srv.URL+"/status", "")
	if code != 200 {
		t.Fatalf("/status = %d", code)
	}
	for _, want := range []string{
		`<tr id="key-one" data-state="cooling">`, `<td class="reason">rate_limited</td>`, `<td class="left">1m30s</td>`,
		`<td class="last-status">429 (3s ago)</td>`, `<tr id="key-two" data-state="available">`,
		`<tr id="key-three" data-state="disabled">`, `1 of 3 keys available`, "v9.9.9-test",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	// do() fails the test on a key value; hints are not on the open page either.
	for _, s := range pool.Status() {
		if strings.Contains(body, s.Key.Hint()) {
			t.Errorf("the open page shows the hint of key %s", s.Key.ID())
		}
	}
}

func TestStatusPageCanBeTurnedOff(t *testing.T) {
	srv, _, _ := newStatusServer(t, false)
	if code, _ := do(t, "GET", srv.URL+"/status", ""); code != 404 {
		t.Errorf("/status with status_page off = %d, want 404", code)
	}
}

func TestStatusAPINeedsTheToken(t *testing.T) {
	srv, _, _ := newStatusServer(t, true)
	if code, _ := do(t, "GET", srv.URL+"/v1/status", ""); code != 401 {
		t.Errorf("/v1/status without token = %d, want 401", code)
	}
	code, body := do(t, "GET", srv.URL+"/v1/status", token)
	var v struct {
		Version, Readiness string
		Pools              []struct {
			Name      string
			Available int
			Keys      []struct{ ID, State string }
		}
	}
	if err := json.Unmarshal([]byte(body), &v); code != 200 || err != nil {
		t.Fatalf("/v1/status = %d %s (%v)", code, body, err)
	}
	if v.Version != "v9.9.9-test" || v.Readiness != "ready" || len(v.Pools) != 1 || v.Pools[0].Available != 3 || len(v.Pools[0].Keys) != 3 {
		t.Errorf("/v1/status = %+v", v)
	}
}

func TestStatusPageShowsAKeyWhoseCooldownEndedAsProbing(t *testing.T) {
	srv, pool, clock := newStatusServer(t, true)
	pool.FailKey(context.Background(), keypool.Attempt{RequestID: "r", Number: 1}, pool.Status()[0].Key, keypool.ReasonRateLimited,
		keypool.Hint{After: 10 * time.Second, Known: true})
	clock.Advance(11 * time.Second)
	_, body := do(t, "GET", srv.URL+"/status", "")
	if !strings.Contains(body, `<tr id="key-one" data-state="probing">`) || !strings.Contains(body, `2 of 3 keys available`) {
		t.Errorf("a key whose cooldown ended is not shown probing:\n%s", body)
	}
}
