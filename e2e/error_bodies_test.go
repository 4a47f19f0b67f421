package e2e

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// Error bodies through the stand-in: envoy-keypool asks Envoy (the stand-in follows
// ext_proc.cc's mode_override) to buffer the body of a failure, classifies it, and
// puts the retry marker on its answer to the body.
func TestErrorBodiesDecideTheClass(t *testing.T) {
	tg := startFlowTarget(t, flowOptions{replicas: 1, pools: []map[string]any{
		flowPool("body", "openai", 3, nil),
	}})
	// Key 1 is out of credit: only its body says so (insufficient_quota); key 2 is
	// rate limited, as its Retry-After says.
	tg.programKey(t, "body", 0, mockprovider.Behavior{Failure: mockprovider.FailureQuota})
	tg.programKey(t, "body", 1, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited,
		Headers: map[string]string{"Retry-After": "30"}})
	if got := tg.chatRequest(t, "body", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
		t.Fatalf("client got %d %s, want key 3's answer", got.status, got.body)
	}
	if a := tg.attempts(t, "body"); !sameInts(a, []int{0, 1, 2}) {
		t.Fatalf("provider saw keys %v, want 1, 2, 3", a)
	}
	ks := tg.flowKeys(t, 0, "body")
	if k := ks[0]; k.Phase != "cooling" || k.Reason != "quota" || k.Remaining < 3500 {
		t.Errorf("key 1 after insufficient_quota: %+v, want cooling for quota, about an hour", k)
	}
	// The rate limit is the model's (Envoy read it from the JSON body); the quota the
	// key's, whatever the model.
	if k := ks[1]; k.Phase != "available" || len(k.Models) != 1 || k.Models[0].Model != "gpt-4o-mini" ||
		k.Models[0].Phase != "cooling" || k.Models[0].Reason != "rate_limited" {
		t.Errorf("key 2 after a rate limit: %+v, want cooling for gpt-4o-mini only", k)
	}
	if got := tg.replicaMetric(t, 0, `envoy_keypool_error_bodies_total{pool="body",result="classified"}`); got != 2 {
		t.Errorf("error bodies classified: %v, want 2 (the retry happened on the body answers)", got)
	}
}

// Successful answers, streamed ones included, are never held; an error body too
// large to buffer is decided from its headers, and still fails over.
func TestErrorBodiesAreAskedForOnlyWhenSmallAndFailing(t *testing.T) {
	tg := startFlowTarget(t, flowOptions{replicas: 1, pools: []map[string]any{
		flowPool("body", "openai", 2, nil),
	}})
	for _, stream := range []bool{false, true} {
		if _, err := openaiChat("body", placeholderKey, stream)(testCtx(t), tg); err != nil {
			t.Fatalf("healthy request (stream %v): %v", stream, err)
		}
	}
	if got := tg.replicaMetric(t, 0, `envoy_keypool_error_bodies_total{pool="body",result="requested"}`); got != 0 {
		t.Fatalf("a successful answer's body was asked for (%v)", got)
	}

	// A 1 MiB error body: past what envoy-keypool asks Envoy to buffer.
	tg.programKey(t, "body", 0, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited, BodySize: 1 << 20,
		Headers: map[string]string{"Retry-After": "30"}})
	tg.clearRequests(t)
	if got := tg.chatRequest(t, "body", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
		t.Fatalf("client got %d (%d bytes), want key 2's answer after a header-only decision", got.status, len(got.body))
	}
	if a := tg.attempts(t, "body"); !sameInts(a, []int{0, 1}) {
		t.Fatalf("provider saw keys %v, want 1 then 2", a)
	}
	if got := tg.replicaMetric(t, 0, `envoy_keypool_error_bodies_total{pool="body",result="too_large"}`); got != 1 {
		t.Errorf("error bodies too large to ask for: %v, want 1", got)
	}
}

// The model of an OpenAI request is in its JSON body: the generated Envoy
// configuration has Envoy read it (json_to_metadata) and hand it to envoy-keypool,
// so a rate limit cools the key for that model only. Without a readable model the
// cooldown is key-wide.
func TestModelFromTheJSONBody(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantModel string // "" for key-wide
	}{
		{"model in the body", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, "gpt-4o"},
		{"no model", `{"messages":[{"role":"user","content":"hi"}]}`, ""},
		{"malformed JSON", `{"model":"gpt-4o","messages":[`, ""},
		{"past the buffer limit", `{"model":"gpt-4o","pad":"` + strings.Repeat("x", 70000) + `"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := startFlowTarget(t, flowOptions{replicas: 1, envoy: map[string]any{"request_body_buffer_limit": 65536},
				pools: []map[string]any{flowPool("body", "openai", 2, nil)}})
			tg.programKey(t, "body", 0, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited,
				Headers: map[string]string{"Retry-After": "30"}})
			tg.post(t, "/body/v1/chat/completions", tt.body, map[string]string{"authorization": "Bearer " + placeholderKey})
			k := tg.flowKeys(t, 0, "body")[0]
			switch {
			case tt.wantModel == "" && (k.Phase != "cooling" || len(k.Models) != 0):
				t.Fatalf("key 1: %+v, want a key-wide cooldown", k)
			case tt.wantModel != "" && (k.Phase != "available" || len(k.Models) != 1 || k.Models[0].Model != tt.wantModel):
				t.Fatalf("key 1: %+v, want a cooldown for model %s only", k, tt.wantModel)
			}
		})
	}
}

// replicaMetric reads one sample of replica i's /metrics; 0 when absent.
func (tg *target) replicaMetric(t *testing.T, i int, series string) float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, tg.adminURLs[i]+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(fmt.Errorf("%s: %w", series, err))
	}
	return v
}
