package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
	"github.com/envoy-keypool/envoy-keypool/internal/stack"
	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
)

// flowOptions is a local stack for the failure-semantics tests: pools of their
// own (short cooldowns, the keys the scenario needs), the Envoy configuration
// generated from them, one or two replicas, Redis or not.
type flowOptions struct {
	replicas int
	redis    bool
	pools    []map[string]any
	envoy    map[string]any // merged into the envoy: section
}

// startFlowTarget brings up the stack for one test (local only: the compose stack
// has fixed pools) and tears it down after, checking that no key value leaked.
func startFlowTarget(t *testing.T, o flowOptions) *target {
	t.Helper()
	if os.Getenv("KEYPOOL_E2E_TARGET") == "compose" {
		t.Skip("needs pools of its own: local stack only")
	}
	opts := stack.Options{RepoRoot: repoRoot, KeypoolBinary: keypoolBinary, Replicas: o.replicas,
		Configure: func(tree map[string]any) {
			pools := make([]any, len(o.pools))
			for i, p := range o.pools {
				pools[i] = p
			}
			tree["pools"] = pools
			if o.envoy != nil {
				e, _ := tree["envoy"].(map[string]any)
				if e == nil {
					e = map[string]any{}
				}
				for k, v := range o.envoy {
					e[k] = v
				}
				tree["envoy"] = e
			}
			if os.Getenv("KEYPOOL_E2E_DEBUG") != "" {
				tree["log"] = map[string]any{"level": "debug", "format": "json"}
			}
		}}
	var redis *testredis.Server
	if o.redis {
		redis = testredis.Start(t)
		opts.RedisURL = redis.URL()
	}
	if testing.Verbose() {
		opts.Log = &testLogWriter{t: t}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if redis == nil {
		return launchStack(t, ctx, opts, nil)
	}
	tg := launchStack(t, ctx, opts, redis)
	tg.redis = redis
	return tg
}

// flowPool is a pool of n keys on the mock provider, named name, with extra
// settings merged in.
func flowPool(name, provider string, n int, extra map[string]any) map[string]any {
	keys := make([]any, n)
	for i := range keys {
		keys[i] = map[string]any{"id": fmt.Sprintf("%s-%d", name, i+1),
			"secret": fmt.Sprintf("env:%s_KEY_%d", strings.ToUpper(strings.ReplaceAll(name, "-", "_")), i+1)}
	}
	p := map[string]any{"name": name, "provider": provider, "keys": keys,
		"route": map[string]any{"upstream": "http://mock-provider:8080"}}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

// shortCooldowns makes rate-limit cooldowns follow the provider's word down to 1s,
// so that tests wait seconds, not minutes.
func shortCooldowns() map[string]any {
	return map[string]any{"rate_limited": map[string]any{"default": "2s", "min": "1s"}}
}

// answer is what a client got.
type answer struct {
	status int
	header http.Header
	body   string
}

// chatRequest sends an OpenAI-style chat completion for model through pool's
// route, with the given credential header value ("" for none).
func (tg *target) chatRequest(t *testing.T, pool, model, authorization string) answer {
	t.Helper()
	return tg.chatRequestVia(t, http.DefaultClient, pool, model, authorization)
}

// chatRequestVia is chatRequest through client c.
func (tg *target) chatRequestVia(t *testing.T, c *http.Client, pool, model, authorization string) answer {
	t.Helper()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hello"}]}`, model)
	return tg.postVia(t, c, "/"+pool+"/v1/chat/completions", body, map[string]string{"authorization": authorization})
}

// concurrentClient is an HTTP client for n concurrent callers that keeps a
// connection per caller, as SDK clients do (http.DefaultClient keeps 2 idle
// connections per host: the others would connect anew on every request).
func concurrentClient(t *testing.T, n int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = n
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// geminiRequest sends a generateContent for model through pool's route.
func (tg *target) geminiRequest(t *testing.T, pool, model string) answer {
	t.Helper()
	return tg.post(t, "/"+pool+"/v1beta/models/"+model+":generateContent",
		`{"contents":[{"parts":[{"text":"hello"}]}]}`, map[string]string{"x-goog-api-key": placeholderKey})
}

func (tg *target) post(t *testing.T, path, body string, headers map[string]string) answer {
	t.Helper()
	return tg.postVia(t, http.DefaultClient, path, body, headers)
}

func (tg *target) postVia(t *testing.T, c *http.Client, path, body string, headers map[string]string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, tg.url+path, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/json")
	for k, v := range headers {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// attempts are the provider requests the mock saw since the last clear, as key
// indexes of pool (-1 for a credential that is none of its keys).
func (tg *target) attempts(t *testing.T, pool string) []int {
	t.Helper()
	reqs, err := tg.mock.Requests(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int, len(reqs))
	for i, r := range reqs {
		out[i] = tg.keyIndex(pool, r.Key)
	}
	return out
}

func (tg *target) keyIndex(pool, value string) int {
	for i, k := range tg.keys[pool] {
		if k.Value == value {
			return i
		}
	}
	return -1
}

func (tg *target) clearRequests(t *testing.T) {
	t.Helper()
	if err := tg.mock.ClearRequests(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// flowKey is one key as the admin API lists it, with the fields these tests read.
type flowKey struct {
	ID        string      `json:"id"`
	Available bool        `json:"available"`
	Phase     string      `json:"phase"`
	Reason    string      `json:"reason"`
	Remaining float64     `json:"cooling_seconds_remaining"`
	Span      float64     `json:"cooldown_seconds"`
	Models    []flowScope `json:"models"`
}

// flowScope is a key's state for one model.
type flowScope struct {
	Model     string  `json:"model"`
	Phase     string  `json:"phase"`
	Reason    string  `json:"reason"`
	Remaining float64 `json:"cooling_seconds_remaining"`
	Span      float64 `json:"cooldown_seconds"`
}

// scope is k's state for model: the key-wide state when it cools the key, else
// the model's own; the zero flowScope (available) when neither holds it back.
func (k flowKey) scope(model string) flowScope {
	if k.Phase != "available" {
		return flowScope{Phase: k.Phase, Reason: k.Reason, Remaining: k.Remaining, Span: k.Span}
	}
	for _, m := range k.Models {
		if m.Model == model {
			return m
		}
	}
	return flowScope{Phase: "available"}
}

// flowKeys is pool's keys as replica i sees them, in priority order.
func (tg *target) flowKeys(t *testing.T, i int, pool string) []flowKey {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, tg.adminURLs[i]+"/v1/keys", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tg.adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Pools []struct {
			Name string    `json:"name"`
			Keys []flowKey `json:"keys"`
		} `json:"pools"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	for _, p := range body.Pools {
		if p.Name == pool {
			return p.Keys
		}
	}
	t.Fatalf("replica %d lists no pool %q", i+1, pool)
	return nil
}

// programKey sets the mock's behaviour for key index i of pool.
func (tg *target) programKey(t *testing.T, pool string, i int, b mockprovider.Behavior) {
	t.Helper()
	if err := tg.mock.SetBehavior(testCtx(t), tg.keys[pool][i].Value, b); err != nil {
		t.Fatal(err)
	}
}

func sameInts(a, b []int) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// waitKeyNotCooling waits until no replica has key index i of pool cooling, for
// any model.
func (tg *target) waitKeyNotCooling(t *testing.T, pool string, i int) {
	t.Helper()
	for r := range tg.adminURLs {
		waitFor(t, fmt.Sprintf("replica %d to end %s's cooldowns", r+1, tg.keys[pool][i].ID), 10*time.Second, func() bool {
			k := tg.flowKeys(t, r, pool)[i]
			if k.Phase == "cooling" {
				return false
			}
			for _, m := range k.Models {
				if m.Phase == "cooling" {
					return false
				}
			}
			return true
		})
	}
}
