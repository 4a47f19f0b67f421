package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/openai/openai-go/v3"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// servedBy returns the key values of the provider requests the mock recorded, in order.
func servedBy(t *testing.T, tg *target) []string {
	t.Helper()
	reqs, err := tg.mock.Requests(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, len(reqs))
	for i, r := range reqs {
		keys[i] = r.Key
	}
	return keys
}

func (tg *target) program(t *testing.T, pool string, keyIndex int, b mockprovider.Behavior) {
	t.Helper()
	if err := tg.mock.SetBehavior(testCtx(t), tg.keys[pool][keyIndex].Value, b); err != nil {
		t.Fatal(err)
	}
}

func (tg *target) keyValue(pool string, i int) string { return tg.keys[pool][i].Value }

func TestHappyPathUsesTheFirstKey(t *testing.T) {
	tg := startTarget(t)
	for _, c := range chatCases() {
		t.Run(c.name, func(t *testing.T) {
			if err := tg.mock.ClearRequests(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			text, err := c.chat(testCtx(t), tg)
			if err != nil {
				t.Fatal(err)
			}
			if text != mockprovider.ReplyText {
				t.Errorf("reply %q, want %q", text, mockprovider.ReplyText)
			}
			if got := servedBy(t, tg); len(got) != 1 || got[0] != tg.keyValue(c.pool, 0) {
				t.Errorf("provider saw keys %d requests, want one with the pool's first key", len(got))
			}
		})
	}
}

func TestRateLimitedKeyFailsOverAndCools(t *testing.T) {
	for _, c := range chatCases() {
		t.Run(c.name, func(t *testing.T) {
			tg := startTarget(t)
			tg.program(t, c.pool, 0, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "120"}})
			text, err := c.chat(testCtx(t), tg)
			if err != nil || text != mockprovider.ReplyText {
				t.Fatalf("reply %q, %v; want the second key to serve", text, err)
			}
			want := []string{tg.keyValue(c.pool, 0), tg.keyValue(c.pool, 1)}
			if got := servedBy(t, tg); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("provider saw %d attempts, want key 1 then key 2", len(got))
			}
			// Key 1 cools on both replicas; the next requests go straight to key 2.
			for i := range tg.adminURLs {
				waitFor(t, fmt.Sprintf("replica %d to see key 1 cooling", i+1), 5*time.Second, func() bool {
					ks, err := tg.adminKeys(testCtx(t), i, c.pool)
					k := ks[tg.keys[c.pool][0].ID]
					return err == nil && k.cooling("rate_limited")
				})
			}
			if err := tg.mock.ClearRequests(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			for range 4 { // both replicas serve first attempts
				if _, err := c.chat(testCtx(t), tg); err != nil {
					t.Fatal(err)
				}
			}
			for _, k := range servedBy(t, tg) {
				if k != tg.keyValue(c.pool, 1) {
					t.Fatal("a request reached another key than key 2 while key 1 cools")
				}
			}
		})
	}
}

func TestAllKeysRateLimitedGivesTypedRetryableError(t *testing.T) {
	for _, c := range chatCases() {
		t.Run(c.name, func(t *testing.T) {
			tg := startTarget(t)
			for i := range tg.keys[c.pool] {
				// The soonest key returns in 20s: that is the honest Retry-After.
				tg.program(t, c.pool, i, mockprovider.Behavior{Status: 429,
					Headers: map[string]string{"Retry-After": strconv.Itoa(40 - 10*(i%2))}})
			}
			tg.program(t, c.pool, len(tg.keys[c.pool])-1, mockprovider.Behavior{Status: 429,
				Headers: map[string]string{"retry-after-ms": "20000"}})
			_, err := c.chat(testCtx(t), tg)
			status, typ, retryAfter := apiError(t, err)
			wantType := map[string]string{"openai": "requests", "anthropic": "rate_limit_error"}[c.pool]
			if status != 429 || typ != wantType || retryAfter != "20" {
				t.Errorf("got status %d type %q Retry-After %q; want 429 %q 20", status, typ, retryAfter, wantType)
			}
			if got := servedBy(t, tg); len(got) != len(tg.keys[c.pool]) {
				t.Errorf("provider saw %d attempts, want each of the %d keys once", len(got), len(tg.keys[c.pool]))
			}
		})
	}
}

func TestAllKeysUnauthorizedGives502(t *testing.T) {
	for _, c := range chatCases() {
		t.Run(c.name, func(t *testing.T) {
			tg := startTarget(t)
			for i := range tg.keys[c.pool] {
				tg.program(t, c.pool, i, mockprovider.Behavior{Status: 401})
			}
			_, err := c.chat(testCtx(t), tg)
			status, _, retryAfter := apiError(t, err)
			if status != 502 || retryAfter != "" {
				t.Errorf("got status %d Retry-After %q; want 502 without Retry-After", status, retryAfter)
			}
		})
	}
}

// apiError reads an SDK's typed API error: status, error type and Retry-After.
func apiError(t *testing.T, err error) (int, string, string) {
	t.Helper()
	var oe *openai.Error
	if errors.As(err, &oe) {
		return oe.StatusCode, oe.Type, oe.Response.Header.Get("Retry-After")
	}
	var ae *anthropic.Error
	if errors.As(err, &ae) {
		return ae.StatusCode, string(ae.Type()), ae.Response.Header.Get("Retry-After")
	}
	t.Fatalf("err = %v, want an SDK API error", err)
	return 0, "", ""
}

func TestBYOKAllowedPassesTheClientKey(t *testing.T) {
	tg := startTarget(t)
	const clientKey = "client-own-openai-key-0123456789"
	for _, stream := range []bool{false, true} {
		if _, err := openaiChat("openai-byok", clientKey, stream)(testCtx(t), tg); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range servedBy(t, tg) {
		if k != clientKey {
			t.Fatal("a BYOK request reached the provider without the client's own key")
		}
	}
	// The client's key failing is the client's answer: no failover to pool keys.
	if err := tg.mock.SetBehavior(testCtx(t), clientKey, mockprovider.Behavior{Status: 429}); err != nil {
		t.Fatal(err)
	}
	if err := tg.mock.ClearRequests(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	_, err := openaiChat("openai-byok", clientKey, false)(testCtx(t), tg)
	if status, _, _ := apiError(t, err); status != 429 {
		t.Errorf("status %d, want the provider's own 429", status)
	}
	if got := servedBy(t, tg); len(got) != 1 {
		t.Errorf("provider saw %d attempts, want 1 (BYOK never fails over)", len(got))
	}
	// Without a credential of its own the client is served from the pool.
	req, _ := http.NewRequestWithContext(testCtx(t), http.MethodPost, tg.url+"/openai-byok/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := servedBy(t, tg); resp.StatusCode != 200 || got[len(got)-1] != tg.keyValue("openai-byok", 0) {
		t.Errorf("status %d; want 200 from the pool key", resp.StatusCode)
	}
}

func TestBYOKDeniedNeverForwardsClientCredentials(t *testing.T) {
	tg := startTarget(t)
	const clientKey = "client-credential-must-not-leak-42"
	for _, c := range []chatCase{
		{"openai", "openai", openaiChat("openai", clientKey, false)},
		{"openai-stream", "openai", openaiChat("openai", clientKey, true)},
		{"anthropic", "anthropic", anthropicChat(clientKey, false)},
	} {
		if _, err := c.chat(testCtx(t), tg); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	// A raw client sending every provider's credential header at once.
	for _, pool := range []string{"openai", "anthropic"} {
		path := map[string]string{"openai": "/openai/v1/chat/completions", "anthropic": "/anthropic/v1/messages"}[pool]
		req, _ := http.NewRequestWithContext(testCtx(t), http.MethodPost, tg.url+path,
			strings.NewReader(`{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`))
		for _, h := range []string{"Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key"} {
			v := clientKey
			if h == "Authorization" {
				v = "Bearer " + clientKey
			}
			req.Header.Set(h, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s raw request: status %d", pool, resp.StatusCode)
		}
	}
	reqs, err := tg.mock.Requests(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 5 {
		t.Fatalf("provider saw %d requests, want 5", len(reqs))
	}
	for _, r := range reqs {
		for name, vs := range r.CredentialHeaders {
			for _, v := range vs {
				if strings.Contains(v, clientKey) {
					t.Errorf("client credential reached the provider in %s", name)
				}
			}
		}
		if r.Key != tg.keyValue(string(r.Provider), 0) {
			t.Errorf("%s request served by another key than the pool's first", r.Provider)
		}
	}
}

func TestMarkThroughOneReplicaIsSeenByTheOther(t *testing.T) {
	tg := startTarget(t)
	if len(tg.adminURLs) < 2 {
		t.Skip("needs two replicas")
	}
	key1 := tg.keys["openai"][0]
	// Mark key 1 through replica 1's admin API only.
	req, _ := http.NewRequestWithContext(testCtx(t), http.MethodPost,
		tg.adminURLs[0]+"/v1/pools/openai/keys/"+key1.ID+"/disable?for=10m", nil)
	req.Header.Set("Authorization", "Bearer "+tg.adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("disable through replica 1: %v %v", resp, err)
	}
	resp.Body.Close()
	waitFor(t, "replica 2 to see key 1 disabled", 5*time.Second, func() bool {
		ks, err := tg.adminKeys(testCtx(t), 1, "openai")
		return err == nil && !ks[key1.ID].Available
	})
	// Requests land on both replicas (round robin): none may use key 1.
	for range 6 {
		if _, err := openaiChat("openai", placeholderKey, false)(testCtx(t), tg); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range servedBy(t, tg) {
		if k == key1.Value {
			t.Fatal("a replica used the key another replica disabled")
		}
	}
}

func TestOverloadIsNotAKeyFailure(t *testing.T) {
	tg := startTarget(t)
	tg.program(t, "anthropic", 0, mockprovider.Behavior{Status: 529, ErrorType: "overloaded_error"})
	_, err := anthropicChat(placeholderKey, false)(testCtx(t), tg)
	if status, typ, _ := apiError(t, err); status != 529 || typ != "overloaded_error" {
		t.Fatalf("got %d %q, want the provider's own 529 overloaded_error", status, typ)
	}
	if got := servedBy(t, tg); len(got) != 1 {
		t.Fatalf("provider saw %d attempts, want 1: a 529 is no reason to try another key", len(got))
	}
	for i := range tg.adminURLs {
		ks, err := tg.adminKeys(testCtx(t), i, "anthropic")
		if err != nil || !ks[tg.keys["anthropic"][0].ID].Available {
			t.Fatalf("replica %d marked key 1 after a 529 (%v)", i+1, err)
		}
	}
}

func TestRedisKilledMidLoadFailsNoRequest(t *testing.T) {
	tg := startTarget(t)
	// Key 1 of each pool fails: every request needs a mark and a shared read.
	tg.program(t, "openai", 0, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "1"}})
	tg.program(t, "anthropic", 0, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "1"}})
	l := startLoad(t, tg, 8)
	l.waitMore(t, 40)
	tg.killRedis(t)
	l.waitMore(t, 80)
	tg.restartRedis(t)
	l.waitMore(t, 80)
	if errs := l.finish().errs; len(errs) > 0 {
		t.Fatalf("%d requests failed across the Redis outage; first: %v", len(errs), errs[0])
	}
	for i := range tg.adminURLs {
		waitFor(t, fmt.Sprintf("replica %d ready again", i+1), 10*time.Second, func() bool {
			return tg.readyz(i) == "ready"
		})
	}
}

// readyz returns the status replica i's /readyz reports.
func (tg *target) readyz(i int) string {
	resp, err := http.Get(tg.adminURLs[i] + "/readyz")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return body.Status
}

func TestConcurrentClientsWithFailingKeys(t *testing.T) {
	tg := startTarget(t)
	keys := tg.keys["openai"]
	if len(keys) < 5 {
		t.Fatalf("the openai pool has %d keys, want 5", len(keys))
	}
	tg.program(t, "openai", 0, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "60"}})
	tg.program(t, "openai", 1, mockprovider.Behavior{Status: 401})
	var wg sync.WaitGroup
	errs := make(chan error, 16*10)
	for range 16 {
		wg.Go(func() {
			for range 10 {
				if _, err := openaiChat("openai", placeholderKey, false)(testCtx(t), tg); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("request failed: %v", err)
	}
	reqs, err := tg.mock.Requests(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	attempts := map[string]int{}
	for _, r := range reqs {
		attempts[r.ClientRequestID]++
	}
	if len(attempts) != 160 {
		t.Errorf("provider saw %d distinct requests, want 160", len(attempts))
	}
	for id, n := range attempts {
		if n > 3 {
			t.Errorf("request %s took %d attempts, want at most 3", id, n)
		}
	}
}
