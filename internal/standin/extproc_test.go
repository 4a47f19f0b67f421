package standin

import (
	"net/http"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Point 5: an ImmediateResponse, on request or response headers, is the final answer:
// its status, headers and body reach the client and the router never retries it
// (ext_proc.cc sendImmediateResponse; upstream filter local replies are not retried,
// HttpProtocolOptions.http_filters docs; Envoy ≥ 1.36 for the upstream position).
func TestImmediateResponseIsFinal(t *testing.T) {
	exhausted := immediate(429, `{"error":{"type":"rate_limit_error"}}`, setHeader("retry-after", "7"), setHeader("content-type", "application/json"), setHeader("x-keypool-retry", "1"))
	tests := []struct {
		name         string
		on           string
		wantUpstream int
		wantStatus   int
	}{
		{"on request headers", "request", 0, 429},
		{"on response headers", "response", 1, 429},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			px, ep, up := keypoolSetup(t, nil, func(_ int, req *extprocv3.ProcessingRequest) answer {
				if (tc.on == "request") == (req.GetRequestHeaders() != nil) {
					return exhausted
				}
				return answer{}
			}, func(int, http.ResponseWriter, *http.Request) {})
			st, hdr, body := do(t, px, "POST", "/v1/chat/completions", "{}", nil)
			if st != tc.wantStatus || body != `{"error":{"type":"rate_limit_error"}}` {
				t.Fatalf("got %d %q", st, body)
			}
			if hdr.Get("Retry-After") != "7" || hdr.Get("Content-Type") != "application/json" {
				t.Errorf("immediate response headers lost: %v", hdr)
			}
			if n := len(ep.recorded()); n != 1 {
				t.Errorf("%d ext_proc streams: the immediate response was retried", n)
			}
			if n := len(up.recorded()); n != tc.wantUpstream {
				t.Errorf("upstream reached %d times, want %d", n, tc.wantUpstream)
			}
			if px.Stats().Retries != 0 {
				t.Errorf("retries = %d, want 0", px.Stats().Retries)
			}
		})
	}
}

// An ImmediateResponse without a status, or with one below 200, answers 200
// (ext_proc.cc DefaultImmediateStatus).
func TestImmediateResponseDefaultStatus(t *testing.T) {
	px, _, _ := keypoolSetup(t, nil, func(int, *extprocv3.ProcessingRequest) answer { return immediate(0, "hi") }, nil)
	if st, _, body := do(t, px, "GET", "/v1/models", "", nil); st != 200 || body != "hi" {
		t.Fatalf("got %d %q, want 200 hi", st, body)
	}
}

// Point 6: ext_proc failures become local replies that are never retried: a failed
// stream answers status_on_error (500 by default), no answer within message_timeout
// answers 504; with failure_mode_allow the request goes on without the filter.
// (ext_proc.cc onGrpcError, onMessageTimeout)
func TestExtProcFailures(t *testing.T) {
	streamErr := func(int, *extprocv3.ProcessingRequest) answer {
		return answer{err: status.Error(codes.Internal, "boom")}
	}
	noAnswer := func(int, *extprocv3.ProcessingRequest) answer { return answer{block: true} }
	tests := []struct {
		name       string
		p          params
		fn         answerFunc
		wantStatus int
		wantUp     int
	}{
		{"stream error", nil, streamErr, 500, 0},
		{"stream error, status_on_error 503", params{"StatusOnError": "503"}, streamErr, 503, 0},
		{"message timeout", params{"MessageTimeout": "0.1s"}, noAnswer, 504, 0},
		{"stream error, failure_mode_allow", params{"FailureModeAllow": "true"}, streamErr, 200, 1},
		{"message timeout, failure_mode_allow", params{"MessageTimeout": "0.1s", "FailureModeAllow": "true"}, noAnswer, 200, 1},
		{"clean close continues", nil, func(int, *extprocv3.ProcessingRequest) answer { return answer{eof: true} }, 200, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A 5xx retry policy shows that the error replies are not retried.
			p := params{"RetryPolicy": "{retry_on: \"5xx,reset\", num_retries: 3, retry_back_off: {base_interval: 0.001s}}"}
			for k, v := range tc.p {
				p[k] = v
			}
			px, ep, up := keypoolSetup(t, p, tc.fn, nil)
			st, _, _ := do(t, px, "POST", "/v1/chat/completions", "{}", nil)
			if st != tc.wantStatus {
				t.Fatalf("status %d, want %d", st, tc.wantStatus)
			}
			if n := len(up.recorded()); n != tc.wantUp {
				t.Errorf("upstream reached %d times, want %d", n, tc.wantUp)
			}
			if n := len(ep.recorded()); n != 1 {
				t.Errorf("%d ext_proc streams, want 1 (no retry)", n)
			}
		})
	}
}

// A stream that cannot open (no ext_proc host answers) is a stream failure too.
func TestExtProcUnreachable(t *testing.T) {
	up := startUpstream(t, nil)
	px := startProxy(t, "keypool_cluster.yaml", params{"StatusOnError": "503"}, map[string][]string{"openai": {up.addr()}, "keypool": {"127.0.0.1:1"}})
	if st, _, _ := do(t, px, "GET", "/v1/models", "", nil); st != 503 {
		t.Fatalf("status %d, want 503", st)
	}
	if n := len(up.recorded()); n != 0 {
		t.Fatalf("upstream reached %d times", n)
	}
}

// An ImmediateResponse goes through the downstream sendLocalReply
// (UpstreamFilterManager::sendLocalReply, upstream_request.cc): the route's response
// header operations run first and the reply's own headers after them
// (DownstreamFilterManager::sendLocalReplyViaFilterChain, filter_manager.cc), so
// response_headers_to_remove cannot strip a header the reply sets; and it gets no
// x-envoy-attempt-count, which only the router adds (router.cc modify_headers_) to
// upstream responses and its own local replies.
func TestImmediateResponseHeaderOrder(t *testing.T) {
	p := params{
		"VHostExtra": "include_attempt_count_in_response: true\n              response_headers_to_add: [{header: {key: x-route, value: from-route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]",
	}
	tests := []struct {
		name        string
		answer      answerFunc
		upstream    func(int, http.ResponseWriter, *http.Request)
		wantStatus  int
		wantRoute   string
		wantMarker  string
		wantAttempt string
	}{
		{
			name: "immediate response",
			answer: func(int, *extprocv3.ProcessingRequest) answer {
				return immediate(429, "exhausted", setHeader("x-route", "from-reply"), setHeader("x-keypool-retry", "1"))
			},
			wantStatus: 429, wantRoute: "from-reply", wantMarker: "1", wantAttempt: "",
		},
		{
			name:       "upstream response",
			answer:     markOn(),
			wantStatus: 200, wantRoute: "from-route", wantMarker: "", wantAttempt: "1",
		},
		{
			name:       "router local reply (reset)",
			answer:     markOn(),
			upstream:   func(int, http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) },
			wantStatus: 503, wantRoute: "from-route", wantMarker: "", wantAttempt: "1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			px, _, _ := keypoolSetup(t, p, tc.answer, tc.upstream)
			st, hdr, _ := do(t, px, "POST", "/v1/chat/completions", "{}", nil)
			if st != tc.wantStatus {
				t.Fatalf("status %d, want %d", st, tc.wantStatus)
			}
			if got := hdr.Get("X-Route"); got != tc.wantRoute {
				t.Errorf("x-route %q, want %q", got, tc.wantRoute)
			}
			if got := hdr.Get("X-Keypool-Retry"); got != tc.wantMarker {
				t.Errorf("x-keypool-retry %q, want %q (response_headers_to_remove runs before the reply's own headers)", got, tc.wantMarker)
			}
			if got := hdr.Get("X-Envoy-Attempt-Count"); got != tc.wantAttempt {
				t.Errorf("x-envoy-attempt-count %q, want %q", got, tc.wantAttempt)
			}
		})
	}
}

// status_on_error outside 4xx and 5xx is 500 (FilterConfig::toErrorCode in ext_proc.h).
func TestStatusOnErrorRange(t *testing.T) {
	for code, want := range map[string]int{"503": 503, "400": 400, "511": 511, "302": 500, "200": 500, "100": 500} {
		t.Run(code, func(t *testing.T) {
			px, _, _ := keypoolSetup(t, params{"StatusOnError": code}, func(int, *extprocv3.ProcessingRequest) answer {
				return answer{err: status.Error(codes.Internal, "boom")}
			}, nil)
			if st, _, _ := do(t, px, "GET", "/v1/models", "", nil); st != want {
				t.Fatalf("status_on_error %s: status %d, want %d", code, st, want)
			}
		})
	}
}
