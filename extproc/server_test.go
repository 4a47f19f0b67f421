package extproc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"cdr.dev/slog/v3"
	"cdr.dev/slog/v3/sloggers/slogjson"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/envoy-keypool/envoy-keypool/extproc"
	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/internal/syncbuf"
	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// Obviously fake key values; every test output is searched for them.
var testKeyValues = map[string][]string{
	"openai":      {"test-openai-key-AAAAAAAAAAAAAAAA", "test-openai-key-BBBBBBBBBBBBBBBB"},
	"anthropic":   {"test-anthropic-key-CCCCCCCCCCCCC", "test-anthropic-key-DDDDDDDDDDDDD"},
	"byok":        {"test-byok-pool-key-EEEEEEEEEEEEEE", "test-byok-pool-key-GGGGGGGGGGGGGG"},
	"gemini":      {"test-gemini-key-HHHHHHHHHHHHHHHH", "test-gemini-key-IIIIIIIIIIIIIIII"},
	"gemini-byok": {"test-gemini-byok-JJJJJJJJJJJJJJJ"},
	"modelheader": {"test-modelhdr-key-KKKKKKKKKKKKKK", "test-modelhdr-key-LLLLLLLLLLLLLL"},
}

const clientKey = "client-own-key-FFFFFFFFFFFFFFFF"

// harness is an ext_proc server on an in-memory gRPC connection, with everything
// it writes captured.
type harness struct {
	t      *testing.T
	clock  *fakeclock.Clock
	srv    *extproc.Server
	reg    *prometheus.Registry
	client extprocv3.ExternalProcessorClient
	logs   *syncbuf.Buffer

	mu        sync.Mutex // protects responses
	responses []string   // protojson of every answer, for the secret scan
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessWith(t, func(*extproc.Options) {})
}

// newHarnessWith is newHarness with options changed by edit (error bodies are
// classified unless it says otherwise).
func newHarnessWith(t *testing.T, edit func(*extproc.Options)) *harness {
	t.Helper()
	clock := fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	// Tried sets outlive the fake clock's jumps between a request's attempts.
	state := keypool.NewMemoryState(clock, time.Hour)
	targets := map[string]*extproc.Target{}
	for _, spec := range []struct {
		pool, provider string
		byok           bool
		modelHeader    string
	}{
		{"openai", "openai", false, ""},
		{"anthropic", "anthropic", false, ""},
		{"byok", "openai", true, ""},
		{"gemini", "gemini", false, ""},
		{"gemini-byok", "gemini", true, ""},
		{"modelheader", "openai", false, "x-ai-eg-model"},
	} {
		var keys []keypool.Key
		for i, v := range testKeyValues[spec.pool] {
			keys = append(keys, keypool.NewKey(spec.pool, fmt.Sprintf("%s-%d", spec.pool, i+1), v))
		}
		pool, err := keypool.NewPool(keypool.PoolOptions{Name: spec.pool, Keys: keys, State: state, Clock: clock})
		if err != nil {
			t.Fatal(err)
		}
		prov, err := providers.New(spec.provider)
		if err != nil {
			t.Fatal(err)
		}
		targets[spec.pool] = &extproc.Target{Pool: pool, Provider: prov, AllowBYOK: spec.byok, ModelHeader: spec.modelHeader}
	}
	logs := &syncbuf.Buffer{}
	reg := prometheus.NewRegistry()
	opts := extproc.Options{
		Targets: targets,
		Headers: extproc.Headers{PoolMetadataKey: "x-keypool-pool", RequestID: "x-request-id",
			AttemptCount: "x-envoy-attempt-count", RetryMarker: "x-keypool-retry"},
		Logger:         slog.Make(slogjson.Sink(logs)).Leveled(slog.LevelDebug),
		Metrics:        extproc.NewMetrics(reg),
		Clock:          clock,
		ClassifyBodies: true,
	}
	edit(&opts)
	srv, err := extproc.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, clock: clock, srv: srv, reg: reg, logs: logs}
	t.Cleanup(h.assertNoSecrets) // registered first, so it runs once the server has stopped
	h.client = serveInProcess(t, srv)
	return h
}

// assertNoSecrets fails when a key value appears in the logs or in any answer other
// than the one request-header mutation that carries the key upstream.
func (h *harness) assertNoSecrets() {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	outputs := append([]string{h.logs.String()}, h.responses...)
	for _, values := range testKeyValues {
		for _, v := range values {
			for _, out := range outputs {
				if strings.Contains(out, v) {
					h.t.Errorf("key value %q… found in output: %.300s", v[:12], out)
				}
			}
		}
	}
}

// stream is one ext_proc stream, as Envoy opens one per upstream attempt.
type stream struct {
	h *harness
	s extprocv3.ExternalProcessor_ProcessClient
}

func (h *harness) open(pool string) *stream {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	h.t.Cleanup(cancel)
	if pool != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-keypool-pool", pool)
	}
	s, err := h.client.Process(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return &stream{h: h, s: s}
}

func headerMap(kv ...string) *corev3.HeaderMap {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return hm
}

// exchange sends req and returns the answer; answers other than request-header
// mutations are kept for the secret scan.
func (st *stream) exchange(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	st.h.t.Helper()
	if err := st.s.Send(req); err != nil {
		st.h.t.Fatalf("send: %v", err)
	}
	resp, err := st.s.Recv()
	if err != nil {
		st.h.t.Fatalf("recv: %v", err)
	}
	if resp.GetRequestHeaders() == nil {
		st.h.mu.Lock()
		st.h.responses = append(st.h.responses, protojson.Format(resp))
		st.h.mu.Unlock()
	}
	return resp
}

func (st *stream) requestHeaders(kv ...string) *extprocv3.ProcessingResponse {
	st.h.t.Helper()
	base := []string{":method", "POST", ":path", "/v1/chat/completions", ":authority", "api.example", ":scheme", "https"}
	return st.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap(append(base, kv...)...)},
	}})
}

func (st *stream) responseHeaders(kv ...string) *extprocv3.ProcessingResponse {
	st.h.t.Helper()
	return st.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...)},
	}})
}

// setHeaders returns the headers a mutation sets, failing on any append action
// other than overwrite-or-add.
func setHeaders(t *testing.T, m *extprocv3.HeaderMutation) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, o := range m.GetSetHeaders() {
		if o.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("header %s set with %s, want OVERWRITE_IF_EXISTS_OR_ADD", o.GetHeader().GetKey(), o.GetAppendAction())
		}
		out[o.GetHeader().GetKey()] = string(o.GetHeader().GetRawValue())
	}
	return out
}

func injected(t *testing.T, resp *extprocv3.ProcessingResponse) (map[string]string, []string) {
	t.Helper()
	rh := resp.GetRequestHeaders()
	if rh == nil {
		t.Fatalf("answer is not a request-headers answer: %v", resp)
	}
	m := rh.GetResponse().GetHeaderMutation()
	return setHeaders(t, m), m.GetRemoveHeaders()
}

func marker(t *testing.T, resp *extprocv3.ProcessingResponse) (string, bool) {
	t.Helper()
	rh := resp.GetResponseHeaders()
	if rh == nil {
		t.Fatalf("answer is not a response-headers answer: %v", resp)
	}
	v, ok := setHeaders(t, rh.GetResponse().GetHeaderMutation())["x-keypool-retry"]
	return v, ok
}

func TestFailoverAcrossAttempts(t *testing.T) {
	h := newHarness(t)
	keys := testKeyValues["openai"]

	s1 := h.open("openai")
	set, _ := injected(t, s1.requestHeaders("x-request-id", "req-1", "x-envoy-attempt-count", "1", "authorization", "Bearer placeholder"))
	if set["authorization"] != "Bearer "+keys[0] {
		t.Fatalf("attempt 1 authorization = %q, want key A", set["authorization"])
	}
	if v, ok := marker(t, s1.responseHeaders(":status", "429", "retry-after", "20")); !ok || v != "rate_limited" {
		t.Fatalf("429 on key A: marker = %q, %v; want rate_limited", v, ok)
	}

	// Envoy's shared header map still carries key A on attempt 2.
	s2 := h.open("openai")
	set, _ = injected(t, s2.requestHeaders("x-request-id", "req-1", "x-envoy-attempt-count", "2", "authorization", "Bearer "+keys[0]))
	if set["authorization"] != "Bearer "+keys[1] {
		t.Fatalf("attempt 2 authorization = %q, want key B", set["authorization"])
	}
	if _, ok := marker(t, s2.responseHeaders(":status", "200")); ok {
		t.Fatal("200 got a retry marker")
	}

	// A new request skips the cooling key A, until its 20s are over.
	s3 := h.open("openai")
	if set, _ := injected(t, s3.requestHeaders("x-request-id", "req-2", "x-envoy-attempt-count", "1")); set["authorization"] != "Bearer "+keys[1] {
		t.Fatalf("new request while A cools: %q, want key B", set["authorization"])
	}
	h.clock.Advance(20 * time.Second)
	s4 := h.open("openai")
	if set, _ := injected(t, s4.requestHeaders("x-request-id", "req-3", "x-envoy-attempt-count", "1")); set["authorization"] != "Bearer "+keys[0] {
		t.Fatalf("after A's cooldown: %q, want key A", set["authorization"])
	}
}

func TestExhaustionAnswersInTheProviderFormat(t *testing.T) {
	tests := []struct {
		pool       string
		status     string
		wantStatus int
		wantRetry  string
		wantType   string // error.type in the body
	}{
		{"openai", "429", 429, "30", "requests"},
		{"openai", "401", 502, "", "server_error"},
		{"anthropic", "429", 429, "30", "rate_limit_error"},
		{"anthropic", "401", 502, "", "api_error"},
	}
	for _, tt := range tests {
		t.Run(tt.pool+"/"+tt.status, func(t *testing.T) {
			h := newHarness(t)
			for attempt := 1; attempt <= 2; attempt++ {
				s := h.open(tt.pool)
				injected(t, s.requestHeaders("x-request-id", "req-x", "x-envoy-attempt-count", fmt.Sprint(attempt)))
				// A 429 with a rate-limit signal cools the key (one without
				// needs corroboration).
				if _, ok := marker(t, s.responseHeaders(":status", tt.status, "retry-after", "30")); !ok {
					t.Fatalf("attempt %d: no marker", attempt)
				}
			}
			s := h.open(tt.pool)
			resp := s.requestHeaders("x-request-id", "req-x", "x-envoy-attempt-count", "3")
			ir := resp.GetImmediateResponse()
			if ir == nil {
				t.Fatalf("attempt 3: %v, want an immediate response", resp)
			}
			if int(ir.GetStatus().GetCode()) != tt.wantStatus {
				t.Errorf("status = %d, want %d", ir.GetStatus().GetCode(), tt.wantStatus)
			}
			hs := setHeaders(t, ir.GetHeaders())
			if hs["retry-after"] != tt.wantRetry || hs["content-type"] != "application/json" {
				t.Errorf("headers = %v, want retry-after %q", hs, tt.wantRetry)
			}
			var body struct {
				Error struct{ Type, Message string } `json:"error"`
			}
			if err := json.Unmarshal(ir.GetBody(), &body); err != nil || body.Error.Type != tt.wantType ||
				!strings.Contains(body.Error.Message, `pool "`+tt.pool+`"`) {
				t.Errorf("body %s: type %q, err %v", ir.GetBody(), body.Error.Type, err)
			}
		})
	}
}

func TestOverloadIsNotAKeyFailure(t *testing.T) {
	for _, status := range []string{"500", "502", "503", "529", "400", "404"} {
		t.Run(status, func(t *testing.T) {
			h := newHarness(t)
			s := h.open("anthropic")
			set, _ := injected(t, s.requestHeaders("x-request-id", "r1", "x-envoy-attempt-count", "1"))
			first := set["x-api-key"]
			if _, ok := marker(t, s.responseHeaders(":status", status)); ok {
				t.Fatalf("%s got a retry marker", status)
			}
			// Nothing was marked: the next request gets the same key.
			s2 := h.open("anthropic")
			if set, _ := injected(t, s2.requestHeaders("x-request-id", "r2", "x-envoy-attempt-count", "1")); set["x-api-key"] != first {
				t.Fatalf("after %s the next request got another key", status)
			}
		})
	}
}

func TestBYOK(t *testing.T) {
	h := newHarness(t)

	// Allowed: the client's own key passes untouched and never fails over.
	s := h.open("byok")
	resp := s.requestHeaders("x-request-id", "r1", "authorization", "Bearer "+clientKey)
	if m := resp.GetRequestHeaders().GetResponse().GetHeaderMutation(); len(m.GetSetHeaders())+len(m.GetRemoveHeaders()) != 0 {
		t.Fatalf("BYOK request was mutated: %v", m)
	}
	if _, ok := marker(t, s.responseHeaders(":status", "429")); ok {
		t.Fatal("a BYOK 429 got a retry marker")
	}
	// Allowed, but no client credential: the pool serves.
	s = h.open("byok")
	if set, _ := injected(t, s.requestHeaders("x-request-id", "r2")); set["authorization"] != "Bearer "+testKeyValues["byok"][0] {
		t.Fatalf("byok pool without a client key: authorization %q", set["authorization"])
	}

	// Denied (the default): every provider credential header is stripped or overwritten.
	tests := []struct {
		pool, authHeader string
	}{{"openai", "authorization"}, {"anthropic", "x-api-key"}}
	for _, tt := range tests {
		s := h.open(tt.pool)
		set, removed := injected(t, s.requestHeaders("x-request-id", "r3",
			"authorization", "Bearer "+clientKey, "x-api-key", clientKey, "api-key", clientKey, "x-goog-api-key", clientKey))
		for _, name := range providers.CredentialHeaders() {
			overwritten := name == tt.authHeader && strings.HasSuffix(set[name], testKeyValues[tt.pool][0])
			if !overwritten && !containsString(removed, name) {
				t.Errorf("%s: client header %s neither removed nor overwritten (set %v, removed %v)", tt.pool, name, set, removed)
			}
		}
		for name, v := range set {
			if strings.Contains(v, clientKey) {
				t.Errorf("%s: client key forwarded in %s", tt.pool, name)
			}
		}
	}
}

func containsString(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func TestUnknownPoolFailsClosed(t *testing.T) {
	tests := []struct{ name, pool, want string }{
		{"unknown pool", "nope", `no pool named "nope"`},
		{"missing metadata", "", `gRPC initial metadata "x-keypool-pool" is missing`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			s := h.open(tt.pool)
			resp := s.requestHeaders("x-request-id", "r1", "authorization", "Bearer "+clientKey)
			ir := resp.GetImmediateResponse()
			var body struct {
				Error struct{ Message string } `json:"error"`
			}
			if ir == nil || ir.GetStatus().GetCode() != 500 {
				t.Fatalf("answer %v, want a 500", resp)
			}
			if err := json.Unmarshal(ir.GetBody(), &body); err != nil || !strings.Contains(body.Error.Message, tt.want) {
				t.Fatalf("body %s (%v), want a message naming the problem: %s", ir.GetBody(), err, tt.want)
			}
			// The stream stays usable: response headers still get a well-formed answer.
			if _, ok := marker(t, s.responseHeaders(":status", "429")); ok {
				t.Error("marker on an unknown pool's response")
			}
		})
	}
}

func TestMalformedMessagesGetWellFormedAnswers(t *testing.T) {
	h := newHarness(t)
	body := &extprocv3.HttpBody{Body: []byte("{}")}
	trailers := &extprocv3.HttpTrailers{}
	tests := []struct {
		name  string
		setup func(*stream)
		req   *extprocv3.ProcessingRequest
		check func(*extprocv3.ProcessingResponse) bool
	}{
		{"response headers before request headers", nil,
			&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap(":status", "429")}}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseHeaders() != nil }},
		{"missing :status", func(s *stream) { s.requestHeaders("x-request-id", "m1") },
			&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap("content-type", "x")}}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseHeaders() != nil }},
		{"non-numeric :status", func(s *stream) { s.requestHeaders("x-request-id", "m2") },
			&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap(":status", "4x9")}}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseHeaders() != nil }},
		{"nil header map", nil,
			&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseHeaders() != nil }},
		{"request body nobody asked for", nil,
			&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: body}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetRequestBody() != nil }},
		{"response body nobody asked for", nil,
			&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: body}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseBody() != nil }},
		{"request trailers nobody asked for", nil,
			&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: trailers}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetRequestTrailers() != nil }},
		{"response trailers nobody asked for", nil,
			&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: trailers}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseTrailers() != nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := h.open("openai")
			if tt.setup != nil {
				tt.setup(s)
			}
			if resp := s.exchange(tt.req); !tt.check(resp) {
				t.Fatalf("answer %v does not match the message", resp)
			}
		})
	}
}

func TestHeaderValuesInValueOrRawValue(t *testing.T) {
	h := newHarness(t)
	for i, useRaw := range []bool{true, false} {
		s := h.open("openai")
		hv := func(k, v string) *corev3.HeaderValue {
			if useRaw {
				return &corev3.HeaderValue{Key: k, RawValue: []byte(v)}
			}
			return &corev3.HeaderValue{Key: k, Value: v}
		}
		id := fmt.Sprintf("req-%d", i)
		injected(t, s.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
			RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				hv("x-request-id", id), hv("x-envoy-attempt-count", "1")}}},
		}}))
		resp := s.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
			ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hv(":status", "429")}}},
		}})
		if _, ok := marker(t, resp); !ok {
			t.Fatalf("raw=%v: 429 not recognised", useRaw)
		}
		// The retry of the same request must not get the key that just failed.
		s2 := h.open("openai")
		set, _ := injected(t, s2.requestHeaders("x-request-id", id, "x-envoy-attempt-count", "2"))
		if set["authorization"] == "Bearer "+testKeyValues["openai"][0] {
			t.Fatalf("raw=%v: retry reused the failed key", useRaw)
		}
		h.clock.Advance(time.Hour) // every cooldown over for the next round
	}
}

func TestClientClosingEarly(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := h.client.Process(metadata.AppendToOutgoingContext(ctx, "x-keypool-pool", "openai"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap("x-request-id", "gone")}}}); err != nil {
		t.Fatal(err)
	}
	cancel()
	// The answer may already be in the client's buffer (gRPC delivers it or the
	// cancellation, whichever it selects first); the stream ends right after it.
	_, err = s.Recv()
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.Canceled {
		t.Fatalf("Recv on a cancelled stream: %v, want Canceled", err)
	}
	// Half-closed stream: the server ends it cleanly.
	s2 := h.open("openai")
	if err := s2.s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("Recv after CloseSend = %v, want io.EOF", err)
	}
	// The server still serves.
	s3 := h.open("openai")
	injected(t, s3.requestHeaders("x-request-id", "after"))
}

func TestConcurrentStreams(t *testing.T) {
	h := newHarness(t)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 20 {
				id := fmt.Sprintf("req-%d-%d", g, i)
				used := map[string]bool{}
				for attempt := 1; attempt <= 3; attempt++ {
					s := h.open("openai")
					resp := s.requestHeaders("x-request-id", id, "x-envoy-attempt-count", fmt.Sprint(attempt))
					if resp.GetImmediateResponse() != nil {
						break
					}
					key := setHeaders(t, resp.GetRequestHeaders().GetResponse().GetHeaderMutation())["authorization"]
					if used[key] {
						t.Errorf("request %s attempt %d reused a key (%s)", id, attempt, h.clock.Now())
					}
					used[key] = true
					status := "200"
					if (g+i)%4 == 0 && attempt == 1 {
						status = "429"
					}
					// Envoy retries only on the marker.
					if _, retry := marker(t, s.responseHeaders(":status", status)); !retry {
						break
					}
				}
				if i%5 == 0 {
					// Small steps: cooldowns (30s) end during the test, while a
					// request's tried keys (remembered 10m) never expire mid-request.
					h.clock.Advance(5 * time.Second)
				}
			}
		})
	}
	wg.Wait()
}

func TestLastStatusPerKey(t *testing.T) {
	h := newHarness(t)
	if _, _, ok := h.srv.LastStatus("openai", "openai-1"); ok {
		t.Fatal("a last status before any answer")
	}
	s := h.open("openai")
	injected(t, s.requestHeaders("x-request-id", "r1", "x-envoy-attempt-count", "1"))
	s.responseHeaders(":status", "429", "retry-after", "20")
	at := h.clock.Now()
	h.clock.Advance(3 * time.Second)
	s2 := h.open("openai")
	injected(t, s2.requestHeaders("x-request-id", "r1", "x-envoy-attempt-count", "2"))
	s2.responseHeaders(":status", "200")

	tests := []struct {
		key    string
		status int
		at     time.Time
	}{
		{"openai-1", 429, at},
		{"openai-2", 200, at.Add(3 * time.Second)},
	}
	for _, tt := range tests {
		code, when, ok := h.srv.LastStatus("openai", tt.key)
		if !ok || code != tt.status || !when.Equal(tt.at.Truncate(time.Second)) {
			t.Errorf("LastStatus(%s) = %d at %v (%v), want %d at %v", tt.key, code, when, ok, tt.status, tt.at)
		}
	}
	if _, _, ok := h.srv.LastStatus("openai", "nope"); ok {
		t.Error("a last status for an unknown key")
	}
}

// The server recycles a stream's state for later streams: a stream must start with
// nothing of an earlier one. Each round leaves a stream that picked a key and heard
// no answer; the next stream's response headers, sent without request headers, must
// not be judged as that key's answer (a 429 would otherwise fail over and cool it).
func TestAStreamStartsWithNothingOfAnEarlierOne(t *testing.T) {
	h := newHarness(t)
	for round := range 8 {
		a := h.open("openai")
		injected(t, a.requestHeaders("x-request-id", fmt.Sprintf("earlier-%d", round)))
		if err := a.s.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := a.s.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("round %d: Recv after CloseSend = %v, want io.EOF", round, err)
		}
		b := h.open("openai")
		if v, retry := marker(t, b.responseHeaders(":status", "429", "retry-after", "30")); retry {
			t.Fatalf("round %d: response headers without request headers were judged (marker %q)", round, v)
		}
	}
	if got := h.metric("envoy_keypool_key_failures_total", nil); got != 0 {
		t.Errorf("key failures recorded: %v, want 0", got)
	}
	for i := range 2 {
		s := h.open("openai")
		injected(t, s.requestHeaders("x-request-id", fmt.Sprintf("after-%d", i)))
		if _, retry := marker(t, s.responseHeaders(":status", "200")); retry {
			t.Fatalf("a healthy answer asked for a retry")
		}
	}
}
