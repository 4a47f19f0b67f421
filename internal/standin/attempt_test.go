package standin

import (
	"net/http"
	"strconv"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// Point 1: x-request-id is generated once per request and is the same on every
// attempt; x-envoy-attempt-count counts attempts on the request headers when the
// virtual host sets include_request_attempt_count. (connection_manager_utility.cc,
// router.cc)
func TestRequestIDAndAttemptCount(t *testing.T) {
	tests := []struct {
		name          string
		attemptCount  string
		clientID      string
		wantCountHdrs []string
	}{
		{name: "generated, counted", attemptCount: "true", wantCountHdrs: []string{"1", "2", "3"}},
		{name: "client id kept", attemptCount: "true", clientID: "client-chosen-id", wantCountHdrs: []string{"1", "2", "3"}},
		{name: "count off", attemptCount: "false", wantCountHdrs: []string{"", "", ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			px, ep, up := keypoolSetup(t, params{"AttemptCount": tc.attemptCount}, markOn(429), func(n int, w http.ResponseWriter, r *http.Request) {
				if n < 2 {
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				_, _ = w.Write([]byte("done"))
			})
			hdr := map[string]string{}
			if tc.clientID != "" {
				hdr["x-request-id"] = tc.clientID
			}
			status, _, body := do(t, px, "POST", "/v1/chat/completions", `{"model":"x"}`, hdr)
			if status != 200 || body != "done" {
				t.Fatalf("got %d %q, want 200 done", status, body)
			}
			reqs := up.recorded()
			if len(reqs) != 3 {
				t.Fatalf("upstream saw %d attempts, want 3", len(reqs))
			}
			id := reqs[0].header.Get("X-Request-Id")
			if id == "" || (tc.clientID != "" && id != tc.clientID) {
				t.Fatalf("x-request-id = %q (client sent %q)", id, tc.clientID)
			}
			streams := ep.recorded()
			for i, r := range reqs {
				if got := r.header.Get("X-Request-Id"); got != id {
					t.Errorf("attempt %d x-request-id %q, want %q", i+1, got, id)
				}
				if got := r.header.Get("X-Envoy-Attempt-Count"); got != tc.wantCountHdrs[i] {
					t.Errorf("attempt %d upstream x-envoy-attempt-count %q, want %q", i+1, got, tc.wantCountHdrs[i])
				}
				got, _ := headerOf(streams[i].requests[0], "x-envoy-attempt-count")
				if got != tc.wantCountHdrs[i] {
					t.Errorf("attempt %d ext_proc saw x-envoy-attempt-count %q, want %q", i+1, got, tc.wantCountHdrs[i])
				}
				if got, _ := headerOf(streams[i].requests[0], "x-request-id"); got != id {
					t.Errorf("attempt %d ext_proc saw x-request-id %q", i+1, got)
				}
			}
		})
	}
}

// Point 2: each attempt opens a new Process() stream with the filter's
// initial_metadata, sends request headers (pseudo-headers included, values in
// raw_value) and then the response headers with :status on the same stream.
// (ext_proc.cc, mutation_utils.cc headersToProto)
func TestEachAttemptOpensItsOwnStream(t *testing.T) {
	px, ep, _ := keypoolSetup(t, nil, markOn(401), func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	status, _, _ := do(t, px, "POST", "/v1/messages?beta=true", "{}", map[string]string{"host": "api.example.com", "x-api-key": "client-key"})
	if status != 200 {
		t.Fatalf("status %d, want 200", status)
	}
	streams := ep.recorded()
	if len(streams) != 2 {
		t.Fatalf("%d ext_proc streams, want one per attempt (2)", len(streams))
	}
	for i, s := range streams {
		if got := s.md.Get("x-keypool-pool"); len(got) != 1 || got[0] != "openai" {
			t.Errorf("stream %d metadata x-keypool-pool = %v, want [openai]", i, got)
		}
		if len(s.requests) != 2 || s.requests[0].GetRequestHeaders() == nil || s.requests[1].GetResponseHeaders() == nil {
			t.Fatalf("stream %d carried %v, want request_headers then response_headers", i, s.requests)
		}
		want := map[string]string{":method": "POST", ":path": "/v1/messages?beta=true", ":authority": "api.example.com", ":scheme": "http", "x-api-key": "client-key"}
		for k, v := range want {
			if got, ok := headerOf(s.requests[0], k); !ok || got != v {
				t.Errorf("stream %d request header %s = %q, want %q", i, k, got, v)
			}
		}
		if s.requests[0].GetRequestHeaders().GetEndOfStream() {
			t.Errorf("stream %d: end_of_stream set on a request with a body", i)
		}
		for _, h := range s.requests[0].GetRequestHeaders().GetHeaders().GetHeaders() {
			if h.GetValue() != "" {
				t.Errorf("header %s sent in value, want raw_value only", h.GetKey())
			}
		}
	}
	if st, _ := headerOf(streams[0].requests[1], ":status"); st != "401" {
		t.Errorf("first stream :status %q, want 401", st)
	}
	if st, _ := headerOf(streams[1].requests[1], ":status"); st != "200" {
		t.Errorf("second stream :status %q, want 200", st)
	}
}

// Point 2: processing_mode request/response header modes SEND and SKIP decide which
// messages the server gets.
func TestProcessingModeHeaders(t *testing.T) {
	tests := []struct {
		req, resp string
		want      []string
	}{
		{"SEND", "SEND", []string{"request_headers", "response_headers"}},
		{"SEND", "SKIP", []string{"request_headers"}},
		{"SKIP", "SEND", []string{"response_headers"}},
		{"SKIP", "SKIP", nil},
	}
	for _, tc := range tests {
		t.Run(tc.req+"/"+tc.resp, func(t *testing.T) {
			px, ep, _ := keypoolSetup(t, params{"ReqMode": tc.req, "RespMode": tc.resp}, nil, nil)
			if status, _, _ := do(t, px, "GET", "/v1/models", "", nil); status != 200 {
				t.Fatalf("status %d", status)
			}
			var got []string
			for _, s := range ep.recorded() {
				for _, r := range s.requests {
					switch {
					case r.GetRequestHeaders() != nil:
						got = append(got, "request_headers")
					case r.GetResponseHeaders() != nil:
						got = append(got, "response_headers")
					}
				}
			}
			if strconv.Quote(join(got)) != strconv.Quote(join(tc.want)) {
				t.Fatalf("server saw %v, want %v", got, tc.want)
			}
		})
	}
}

func join(s []string) string {
	out := ""
	for _, v := range s {
		out += v + ";"
	}
	return out
}

// Point 3: every attempt works on one request header map: a header set on attempt 1
// is still there on attempt 2, and OVERWRITE_IF_EXISTS_OR_ADD replaces the key rather
// than piling values up. (router.cc keeps downstream_headers_ across UpstreamRequests)
func TestSharedHeaderMapAcrossAttempts(t *testing.T) {
	px, ep, up := keypoolSetup(t, nil, func(stream int, req *extprocv3.ProcessingRequest) answer {
		if req.GetRequestHeaders() == nil {
			st, _ := headerOf(req, ":status")
			if st == "429" {
				return answer{resp: headersResponse(req, &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("x-keypool-retry", "1")}})}
			}
			return answer{}
		}
		set := []*corev3.HeaderValueOption{setHeader("authorization", "Bearer key-"+strconv.Itoa(stream))}
		if stream == 0 {
			set = append(set, setHeader("x-first-attempt-only", "yes"))
		}
		return answer{resp: headersResponse(req, &extprocv3.HeaderMutation{SetHeaders: set, RemoveHeaders: []string{"x-api-key"}})}
	}, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	if status, _, _ := do(t, px, "POST", "/v1/chat/completions", "{}", map[string]string{"authorization": "Bearer placeholder", "x-api-key": "client"}); status != 200 {
		t.Fatalf("status %d", status)
	}
	reqs := up.recorded()
	if len(reqs) != 2 {
		t.Fatalf("%d attempts, want 2", len(reqs))
	}
	if got := reqs[1].header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer key-1" {
		t.Errorf("attempt 2 authorization %v, want one value Bearer key-1", got)
	}
	if got := reqs[1].header.Get("X-First-Attempt-Only"); got != "yes" {
		t.Errorf("attempt 2 lost the header set on attempt 1: %q", got)
	}
	if got := reqs[0].header.Get("X-Api-Key"); got != "" {
		t.Errorf("removed header reached the upstream: %q", got)
	}
	// The second stream sees the map as attempt 1 left it.
	if got, _ := headerOf(ep.recorded()[1].requests[0], "authorization"); got != "Bearer key-0" {
		t.Errorf("attempt 2 ext_proc saw authorization %q, want attempt 1's Bearer key-0", got)
	}
}
