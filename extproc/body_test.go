package extproc_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/envoy-keypool/envoy-keypool/extproc"
)

// Sample error bodies, as OpenAI documents them.
const (
	openAIQuotaBody     = `{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`
	openAIRateLimitBody = `{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 2s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`
)

func (st *stream) responseHeadersMsg(endOfStream bool, kv ...string) *extprocv3.ProcessingResponse {
	st.h.t.Helper()
	return st.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...), EndOfStream: endOfStream},
	}})
}

func (st *stream) responseBody(body string) *extprocv3.ProcessingResponse {
	st.h.t.Helper()
	return st.exchange(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: true},
	}})
}

// asksForBody reports whether a response-headers answer asks Envoy to buffer the
// response body (and checks that it asks in the one form Envoy accepts).
func asksForBody(t *testing.T, resp *extprocv3.ProcessingResponse) bool {
	t.Helper()
	mo := resp.GetModeOverride()
	if mo == nil {
		return false
	}
	want := &extprocfilterv3.ProcessingMode{
		RequestBodyMode: extprocfilterv3.ProcessingMode_NONE, ResponseBodyMode: extprocfilterv3.ProcessingMode_BUFFERED,
	}
	if mo.String() != want.String() {
		t.Errorf("mode_override %v, want %v (header modes DEFAULT, request body NONE)", mo, want)
	}
	if m := resp.GetResponseHeaders().GetResponse().GetHeaderMutation(); m != nil {
		t.Errorf("the answer that asks for the body also mutates headers: %v", m)
	}
	return true
}

func TestBodyIsAskedForOnlyWhenItCanChangeTheClassAndIsSmallAndSized(t *testing.T) {
	big := strconv.Itoa(1 << 20)
	tests := []struct {
		name        string
		endOfStream bool
		headers     []string
		want        bool
	}{
		{"429 with a small sized body", false, []string{":status", "429", "content-length", "180"}, true},
		{"403 with a small sized body", false, []string{":status", "403", "content-length", "180"}, true},
		{"200 is never held", false, []string{":status", "200", "content-length", "180"}, false},
		{"streamed 200 is never held", false, []string{":status", "200", "content-type", "text/event-stream"}, false},
		{"401 says all in its status", false, []string{":status", "401", "content-length", "180"}, false},
		{"500 is no key failure", false, []string{":status", "500", "content-length", "180"}, false},
		{"429 of unknown size (chunked)", false, []string{":status", "429", "transfer-encoding", "chunked"}, false},
		{"429 of 1 MiB, past the cap", false, []string{":status", "429", "content-length", big}, false},
		{"429 with a malformed content-length", false, []string{":status", "429", "content-length", "12ab"}, false},
		{"429 with content-length 0", false, []string{":status", "429", "content-length", "0"}, false},
		{"429 whose headers end the stream", true, []string{":status", "429", "content-length", "180"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			s := h.open("openai")
			injected(t, s.requestHeaders("x-request-id", "r", "x-envoy-attempt-count", "1"))
			resp := s.responseHeadersMsg(tt.endOfStream, tt.headers...)
			if resp.GetResponseHeaders() == nil {
				t.Fatalf("answer %v is not a response-headers answer", resp)
			}
			if got := asksForBody(t, resp); got != tt.want {
				t.Fatalf("asks for the body: %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBodyClassificationDecidesOnTheBodyAnswer(t *testing.T) {
	tests := []struct {
		name       string
		headers    []string
		body       string
		wantMarker string // "" for none
	}{
		{"quota from the body", []string{"content-length", "200"}, openAIQuotaBody, "quota"},
		{"rate limit from the body", []string{"content-length", "200"}, openAIRateLimitBody, "rate_limited"},
		// A body that tells nothing falls back to what the headers say.
		{"not JSON, with retry-after", []string{"content-length", "9", "retry-after", "5"}, "<html>oops", "rate_limited"},
		{"truncated JSON, no signal", []string{"content-length", "40"}, `{"error":{"message":"You exceeded your cu`, "rate_limit_unconfirmed"},
		{"unknown shape", []string{"content-length", "20"}, `{"detail":"slow down"}`, "rate_limit_unconfirmed"},
		{"empty body", []string{"content-length", "2"}, ``, "rate_limit_unconfirmed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			s := h.open("openai")
			injected(t, s.requestHeaders("x-request-id", "r", "x-envoy-attempt-count", "1"))
			if resp := s.responseHeadersMsg(false, append([]string{":status", "429"}, tt.headers...)...); !asksForBody(t, resp) {
				t.Fatalf("429 with a small body: %v, want the body asked for", resp)
			}
			resp := s.responseBody(tt.body)
			rb := resp.GetResponseBody()
			if rb == nil {
				t.Fatalf("answer to the body %v is not a body answer", resp)
			}
			if rb.GetResponse().GetBodyMutation() != nil {
				t.Errorf("the body answer mutates the body: %v", rb)
			}
			got := setHeaders(t, rb.GetResponse().GetHeaderMutation())["x-keypool-retry"]
			if got != tt.wantMarker {
				t.Errorf("marker on the body answer %q, want %q", got, tt.wantMarker)
			}
		})
	}
}

func TestBodyNobodyAskedForChangesNothing(t *testing.T) {
	h := newHarness(t)
	s := h.open("openai")
	injected(t, s.requestHeaders("x-request-id", "r", "x-envoy-attempt-count", "1"))
	if _, ok := marker(t, s.responseHeaders(":status", "200")); ok {
		t.Fatal("200 got a marker")
	}
	resp := s.responseBody(openAIQuotaBody)
	if resp.GetResponseBody() == nil || resp.GetResponseBody().GetResponse().GetHeaderMutation() != nil {
		t.Fatalf("unrequested body answered %v, want an empty body answer", resp)
	}
	// Nothing was marked: the next request gets the first key.
	s2 := h.open("openai")
	if set, _ := injected(t, s2.requestHeaders("x-request-id", "r2", "x-envoy-attempt-count", "1")); !strings.HasSuffix(set["authorization"], testKeyValues["openai"][0]) {
		t.Fatal("an unrequested quota body cooled the key")
	}
}

func TestBodyIsNeverAskedForWhenEnvoyIsNotToldToAllowIt(t *testing.T) {
	h := newHarnessWith(t, func(o *extproc.Options) { o.ClassifyBodies = false })
	s := h.open("openai")
	injected(t, s.requestHeaders("x-request-id", "r", "x-envoy-attempt-count", "1"))
	resp := s.responseHeadersMsg(false, ":status", "429", "content-length", "180", "retry-after", "5")
	if asksForBody(t, resp) {
		t.Fatal("asked for the body with body classification off")
	}
	if v, _ := marker(t, resp); v != "rate_limited" {
		t.Fatalf("marker %q, want the header-only class rate_limited", v)
	}
}

func TestBodyThatNeverComesStillRecordsTheFailure(t *testing.T) {
	h := newHarness(t)
	s := h.open("openai")
	injected(t, s.requestHeaders("x-request-id", "r", "x-envoy-attempt-count", "1"))
	if !asksForBody(t, s.responseHeadersMsg(false, ":status", "429", "content-length", "180", "retry-after", "20")) {
		t.Fatal("the body was not asked for")
	}
	// Envoy goes on without sending it (its filter ignores mode_override, or the
	// body passed its buffer limit) and ends the stream.
	if err := s.s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.s.Recv(); err == nil {
		t.Fatal("the stream did not end")
	}
	waitUntil(t, "key 0 to cool from the headers of the answer whose body never came", func() bool {
		return h.next("openai", attemptOpts{id: fmt.Sprintf("n-%d", time.Now().UnixNano()), number: 1}) == 1
	})
}

// waitUntil polls cond until it holds, failing the test after a few seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
