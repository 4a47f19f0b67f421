package extproc_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/structpb"
)

// attemptOpts describes one attempt's request headers beyond the basics.
type attemptOpts struct {
	id      string
	number  int
	model   string // forwarded as Envoy's dynamic metadata (json_to_metadata)
	started time.Time
	headers []string // more name, value pairs
}

// requestWith sends an attempt's request headers as the upstream ext_proc filter does
// with the generated configuration: metadata and request.time included when set.
func (st *stream) requestWith(o attemptOpts) *extprocv3.ProcessingResponse {
	st.h.t.Helper()
	path := "/v1/chat/completions"
	var extra []string
	for i := 0; i+1 < len(o.headers); i += 2 {
		if o.headers[i] == ":path" {
			path = o.headers[i+1]
			continue
		}
		extra = append(extra, o.headers[i], o.headers[i+1])
	}
	kv := []string{":method", "POST", ":path", path, ":authority", "api.example", ":scheme", "https",
		"x-request-id", o.id}
	if o.number > 0 {
		kv = append(kv, "x-envoy-attempt-count", fmt.Sprint(o.number))
	}
	kv = append(kv, extra...)
	req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...)},
	}}
	if o.model != "" {
		md, err := structpb.NewStruct(map[string]any{"model": o.model})
		if err != nil {
			st.h.t.Fatal(err)
		}
		req.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy-keypool": md}}
	}
	if !o.started.IsZero() {
		at, err := structpb.NewStruct(map[string]any{"request.time": o.started.UTC().Format("2006-01-02T15:04:05.999999999-07:00")})
		if err != nil {
			st.h.t.Fatal(err)
		}
		req.Attributes = map[string]*structpb.Struct{"envoy.filters.http.ext_proc": at}
	}
	return st.exchange(req)
}

// keyIndex is the index in the pool of the key an answer injected, -1 for none.
func keyIndex(t *testing.T, pool string, resp *extprocv3.ProcessingResponse) int {
	t.Helper()
	if resp.GetRequestHeaders() == nil {
		return -1
	}
	for _, v := range setHeaders(t, resp.GetRequestHeaders().GetResponse().GetHeaderMutation()) {
		for i, k := range testKeyValues[pool] {
			if strings.HasSuffix(v, k) {
				return i
			}
		}
	}
	return -1
}

// try plays one attempt on pool: request headers, then response headers with the
// given status and headers. It returns the key index the attempt got and whether the
// answer asked for a retry.
func (h *harness) try(pool string, o attemptOpts, status int, respHeaders ...string) (int, bool) {
	h.t.Helper()
	s := h.open(pool)
	k := keyIndex(h.t, pool, s.requestWith(o))
	if k < 0 {
		h.t.Fatalf("%s attempt %d of %s got no key", pool, o.number, o.id)
	}
	_, retry := marker(h.t, s.responseHeaders(append([]string{":status", fmt.Sprint(status)}, respHeaders...)...))
	return k, retry
}

// next is the key a new request of pool gets, -1 for an immediate response.
func (h *harness) next(pool string, o attemptOpts) int {
	h.t.Helper()
	s := h.open(pool)
	return keyIndex(h.t, pool, s.requestWith(o))
}

func TestFailureClassDecidesRetryAndCooldown(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		headers    []string
		wantRetry  bool
		wantCooled bool // a new request skips key 1
	}{
		{"429 with retry-after cools", 429, []string{"retry-after", "20"}, true, true},
		{"429 with a spent limit cools", 429, []string{"x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "20s"}, true, true},
		{"bare 429 fails over, awaits corroboration", 429, nil, true, false},
		{"401 cools", 401, nil, true, true},
		{"403 fails over, awaits corroboration", 403, nil, true, false},
		{"500 is no key failure", 500, nil, false, false},
		{"200 is no key failure", 200, nil, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			k, retry := h.try("openai", attemptOpts{id: "r1", number: 1}, tt.status, tt.headers...)
			if k != 0 || retry != tt.wantRetry {
				t.Fatalf("attempt on key %d: retry %v, want key 0 and retry %v", k, retry, tt.wantRetry)
			}
			wantNext := 0
			if tt.wantCooled {
				wantNext = 1
			}
			if got := h.next("openai", attemptOpts{id: "r2", number: 1}); got != wantNext {
				t.Errorf("another client's request got key %d, want %d", got, wantNext)
			}
		})
	}
}

func TestRequestsOwnFailureOnEveryKeyGetsTheProvidersAnswer(t *testing.T) {
	for _, status := range []int{403, 429} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			h := newHarness(t)
			// Nothing says the keys' limits are spent: this request's own failure.
			if k, retry := h.try("openai", attemptOpts{id: "mine", number: 1}, status); k != 0 || !retry {
				t.Fatalf("attempt 1: key %d, retry %v; want key 0 and a retry", k, retry)
			}
			if k, retry := h.try("openai", attemptOpts{id: "mine", number: 2}, status); k != 1 || retry {
				t.Fatalf("attempt 2: key %d, retry %v; want key 1 and the provider's answer to the client", k, retry)
			}
			if got := h.next("openai", attemptOpts{id: "other", number: 1}); got != 0 {
				t.Fatalf("the next client's request got key %d, want key 0 at once", got)
			}
		})
	}
}

func TestCorroboratedFailureCoolsOnlyWhenThreeRequestsAgree(t *testing.T) {
	h := newHarness(t)
	for i := range 3 {
		id := fmt.Sprintf("r%d", i)
		if got := h.next("openai", attemptOpts{id: "probe-" + id, number: 1}); got != 0 {
			t.Fatalf("before failure %d a new request got key %d, want 0", i+1, got)
		}
		if k, retry := h.try("openai", attemptOpts{id: id, number: 1}, 403); k != 0 || !retry {
			t.Fatalf("request %d: key %d, retry %v", i, k, retry)
		}
		h.try("openai", attemptOpts{id: id, number: 2}, 200)
	}
	if got := h.next("openai", attemptOpts{id: "after", number: 1}); got != 1 {
		t.Fatalf("after three agreeing requests a new request got key %d, want key 1 (key 0 cools)", got)
	}
}

func TestFailureLogLineIsInfoOnlyWhenItChangesACooldown(t *testing.T) {
	h := newHarness(t)
	h.try("openai", attemptOpts{id: "a", number: 1}, 403)                      // corroborate: no cooldown change
	h.try("openai", attemptOpts{id: "b", number: 1}, 429, "retry-after", "20") // cools key 0
	levels := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(h.logs.String()), "\n") {
		var e struct {
			Level  string         `json:"level"`
			Msg    string         `json:"msg"`
			Fields map[string]any `json:"fields"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || !strings.HasPrefix(e.Msg, "key failed") {
			continue
		}
		levels[fmt.Sprint(e.Fields["class"])] = append(levels[fmt.Sprint(e.Fields["class"])], e.Level)
	}
	want := map[string][]string{"forbidden": {"DEBUG"}, "rate_limited": {"INFO"}}
	if fmt.Sprint(levels) != fmt.Sprint(want) {
		t.Fatalf("failure log levels by class %v, want %v\nlogs:\n%s", levels, want, h.logs.String())
	}
}

func TestProbeAfterACooldown(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		headers   []string
		wantBack  time.Duration // when key 0 serves new requests again, after the probe
		wantProbe string        // the probes metric's result
	}{
		{"success returns the key", 200, nil, 0, "success"},
		{"failure cools it twice as long", 429, []string{"retry-after", "20"}, 40 * time.Second, "failure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.try("openai", attemptOpts{id: "cool", number: 1}, 429, "retry-after", "20")
			h.clock.Advance(20 * time.Second)

			probe := h.open("openai")
			if k := keyIndex(t, "openai", probe.requestWith(attemptOpts{id: "probe", number: 1})); k != 0 {
				t.Fatalf("first request after the cooldown got key %d, want the probe of key 0", k)
			}
			// While the probe is in flight, other requests keep skipping the key.
			if got := h.next("openai", attemptOpts{id: "meanwhile", number: 1}); got != 1 {
				t.Fatalf("a request during the probe got key %d, want key 1", got)
			}
			probe.responseHeaders(append([]string{":status", fmt.Sprint(tt.status)}, tt.headers...)...)
			if got := h.metric("envoy_keypool_probes_total", map[string]string{"pool": "openai", "key": "openai-1", "result": tt.wantProbe}); got != 1 {
				t.Errorf("probes{result=%s} = %v, want 1", tt.wantProbe, got)
			}
			if tt.wantBack > 0 {
				h.clock.Advance(tt.wantBack - time.Second)
				if got := h.next("openai", attemptOpts{id: "early", number: 1}); got != 1 {
					t.Fatalf("%s after the failed probe a request got key %d, want key 1", tt.wantBack-time.Second, got)
				}
				h.clock.Advance(time.Second)
			}
			if got := h.next("openai", attemptOpts{id: "back", number: 1}); got != 0 {
				t.Fatalf("a request after the probe's verdict got key %d, want key 0", got)
			}
		})
	}
}

func TestHeadroomTakesASpentKeyOutBeforeIts429(t *testing.T) {
	h := newHarness(t)
	h.try("openai", attemptOpts{id: "a", number: 1}, 200,
		"x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "5s",
		"x-ratelimit-remaining-tokens", "9000", "x-ratelimit-reset-tokens", "1s")
	if got := h.next("openai", attemptOpts{id: "b", number: 1}); got != 1 {
		t.Fatalf("after key 0 reported no requests left, a request got key %d, want key 1", got)
	}
	if got := h.metric("envoy_keypool_headroom_depletions_total", map[string]string{"pool": "openai"}); got != 1 {
		t.Errorf("headroom depletions = %v, want 1", got)
	}
	if got := h.metric("envoy_keypool_headroom_steered_picks_total", map[string]string{"pool": "openai"}); got != 1 {
		t.Errorf("picks steered by headroom = %v, want 1", got)
	}
	h.clock.Advance(5 * time.Second)
	if got := h.next("openai", attemptOpts{id: "c", number: 1}); got != 0 {
		t.Fatalf("after the reset a request got key %d, want key 0", got)
	}
	// An answer with room left changes nothing.
	h2 := newHarness(t)
	h2.try("openai", attemptOpts{id: "a", number: 1}, 200, "x-ratelimit-remaining-requests", "12", "x-ratelimit-reset-requests", "5s")
	if got := h2.next("openai", attemptOpts{id: "b", number: 1}); got != 0 {
		t.Fatalf("after an answer with room left a request got key %d, want key 0", got)
	}
}

func TestRateLimitsCoolPerModel(t *testing.T) {
	h := newHarness(t)
	h.try("openai", attemptOpts{id: "a", number: 1, model: "gpt-4o"}, 429, "retry-after", "30")
	tests := []struct {
		model string
		want  int
	}{
		{"gpt-4o", 1},      // key 0 is rate limited for it
		{"gpt-4o-mini", 0}, // not for this one
		{"", 0},            // nor key-wide
	}
	for _, tt := range tests {
		if got := h.next("openai", attemptOpts{id: "n-" + tt.model, number: 1, model: tt.model}); got != tt.want {
			t.Errorf("model %q: key %d, want %d", tt.model, got, tt.want)
		}
	}
	// Key 1 limited for gpt-4o too: gpt-4o is exhausted with its own Retry-After,
	// while gpt-4o-mini is still served.
	h.try("openai", attemptOpts{id: "b", number: 1, model: "gpt-4o"}, 429, "retry-after", "10")
	resp := h.open("openai").requestWith(attemptOpts{id: "c", number: 1, model: "gpt-4o"})
	ir := resp.GetImmediateResponse()
	if ir == nil || ir.GetStatus().GetCode() != 429 || setHeaders(t, ir.GetHeaders())["retry-after"] != "10" {
		t.Fatalf("gpt-4o with every key limited: %v, want 429 with retry-after 10", resp)
	}
	if got := h.next("openai", attemptOpts{id: "d", number: 1, model: "gpt-4o-mini"}); got != 0 {
		t.Errorf("gpt-4o-mini while gpt-4o is exhausted: key %d, want 0", got)
	}
	// Credentials are the key's whatever the model: a 401 cools it key-wide.
	h.try("openai", attemptOpts{id: "e", number: 1, model: "gpt-4o-mini"}, 401)
	if got := h.next("openai", attemptOpts{id: "f", number: 1, model: "o3"}); got != 1 {
		t.Errorf("after a 401 for another model: key %d, want 1", got)
	}
}

func TestModelSources(t *testing.T) {
	t.Run("pool header, removed before the request goes upstream", func(t *testing.T) {
		h := newHarness(t)
		s := h.open("modelheader")
		resp := s.requestWith(attemptOpts{id: "a", number: 1, headers: []string{"x-ai-eg-model", "gpt-4o"}})
		if _, removed := injected(t, resp); !containsString(removed, "x-ai-eg-model") {
			t.Fatalf("the model header was not removed: %v", removed)
		}
		s.responseHeaders(":status", "429", "retry-after", "30")
		if got := h.next("modelheader", attemptOpts{id: "b", number: 1, headers: []string{"x-ai-eg-model", "gpt-4o"}}); got != 1 {
			t.Errorf("same model: key %d, want 1", got)
		}
		if got := h.next("modelheader", attemptOpts{id: "c", number: 1, headers: []string{"x-ai-eg-model", "o3"}}); got != 0 {
			t.Errorf("other model: key %d, want 0", got)
		}
	})
	t.Run("path (gemini)", func(t *testing.T) {
		h := newHarness(t)
		path := func(model string) []string {
			return []string{":path", "/v1beta/models/" + model + ":generateContent"}
		}
		s := h.open("gemini")
		injected(t, s.requestWith(attemptOpts{id: "a", number: 1, headers: path("gemini-2.0-flash")}))
		s.responseHeaders(":status", "429", "retry-after", "30")
		if got := h.next("gemini", attemptOpts{id: "b", number: 1, headers: path("gemini-2.0-flash")}); got != 1 {
			t.Errorf("same model: key %d, want 1", got)
		}
		if got := h.next("gemini", attemptOpts{id: "c", number: 1, headers: path("gemini-2.5-pro")}); got != 0 {
			t.Errorf("other model: key %d, want 0", got)
		}
	})
}

func TestBYOKIsDecidedOnEveryAttempt(t *testing.T) {
	h := newHarness(t)
	keys := testKeyValues["byok"]
	// No client key: the pool serves, and fails over like any pooled request.
	s := h.open("byok")
	if k := keyIndex(t, "byok", s.requestWith(attemptOpts{id: "r", number: 1})); k != 0 {
		t.Fatalf("attempt 1 got key %d, want 0", k)
	}
	if _, retry := marker(t, s.responseHeaders(":status", "429", "retry-after", "20")); !retry {
		t.Fatal("attempt 1's 429 got no retry marker")
	}
	// Envoy's shared header map still carries key 0 on attempt 2: it is the pool's,
	// not the client's.
	s = h.open("byok")
	if k := keyIndex(t, "byok", s.requestWith(attemptOpts{id: "r", number: 2, headers: []string{"authorization", "Bearer " + keys[0]}})); k != 1 {
		t.Fatalf("attempt 2 with the pool's key 0 in its header got key %d, want 1", k)
	}
	// The client's own key passes untouched.
	s = h.open("byok")
	resp := s.requestWith(attemptOpts{id: "own", number: 1, headers: []string{"authorization", "Bearer " + clientKey}})
	if m := resp.GetRequestHeaders().GetResponse().GetHeaderMutation(); resp.GetRequestHeaders() == nil || len(m.GetSetHeaders())+len(m.GetRemoveHeaders()) != 0 {
		t.Fatalf("a client's own key was not passed untouched: %v", resp)
	}
	if got := h.metric("envoy_keypool_byok_passthrough_total", map[string]string{"pool": "byok"}); got != 1 {
		t.Errorf("byok passthroughs = %v, want 1", got)
	}
}

func TestClientKeyInThePathNeverReachesTheProvider(t *testing.T) {
	h := newHarness(t)
	const path = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?key=" + clientKey + "&alt=sse"
	s := h.open("gemini")
	set, _ := injected(t, s.requestWith(attemptOpts{id: "a", number: 1, headers: []string{":path", path}}))
	if got := set[":path"]; got != "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse" {
		t.Errorf(":path set to %q, want the path without key=", got)
	}
	if !strings.HasSuffix(set["x-goog-api-key"], testKeyValues["gemini"][0]) {
		t.Errorf("pool key not injected: %v", set)
	}
	// BYOK allowed: the key in the path is the client's own, and passes untouched.
	s = h.open("gemini-byok")
	resp := s.requestWith(attemptOpts{id: "b", number: 1, headers: []string{":path", path}})
	if m := resp.GetRequestHeaders().GetResponse().GetHeaderMutation(); resp.GetRequestHeaders() == nil || len(m.GetSetHeaders())+len(m.GetRemoveHeaders()) != 0 {
		t.Fatalf("BYOK with the client's key in the path was changed: %v", resp)
	}
}

func TestRequestMetrics(t *testing.T) {
	h := newHarness(t)
	started := h.clock.Now().Add(-3 * time.Second) // Envoy's request.time of the request
	h.try("openai", attemptOpts{id: "r", number: 1, started: started}, 429, "retry-after", "20")
	h.clock.Advance(500 * time.Millisecond)
	h.try("openai", attemptOpts{id: "r", number: 2, started: started}, 200)

	attempts := h.histogram("envoy_keypool_request_attempts", map[string]string{"pool": "openai"})
	if attempts.GetSampleCount() != 1 || attempts.GetSampleSum() != 2 {
		t.Errorf("attempts per request: %d samples, sum %v; want one request of 2 attempts", attempts.GetSampleCount(), attempts.GetSampleSum())
	}
	d := h.histogram("envoy_keypool_request_duration_seconds", map[string]string{"pool": "openai"})
	if d.GetSampleCount() != 1 || d.GetSampleSum() != 3.5 {
		t.Errorf("request duration: %d samples, sum %vs; want one of 3.5s (from Envoy's request.time)", d.GetSampleCount(), d.GetSampleSum())
	}
	if got := h.metric("envoy_keypool_key_failures_total", map[string]string{"pool": "openai", "key": "openai-1", "class": "rate_limited", "action": "cool"}); got != 1 {
		t.Errorf("failures{rate_limited, cool} = %v, want 1", got)
	}
}

// metric is the value of the counter or gauge name with exactly labels; 0 when absent.
func (h *harness) metric(name string, labels map[string]string) float64 {
	h.t.Helper()
	m := h.find(name, labels)
	if m == nil {
		return 0
	}
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

func (h *harness) histogram(name string, labels map[string]string) *dto.Histogram {
	h.t.Helper()
	return h.find(name, labels).GetHistogram()
}

func (h *harness) find(name string, labels map[string]string) *dto.Metric {
	h.t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			if fmt.Sprint(got) == fmt.Sprint(labels) {
				return m
			}
		}
	}
	return nil
}
