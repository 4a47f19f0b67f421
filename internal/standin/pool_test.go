package standin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The provider cluster's circuit breakers (CircuitBreakers.Thresholds, enforced by
// ConnPoolImplBase in conn_pool_base.cc): past max_pending_requests or max_requests a
// stream overflows and the client gets a 503 local reply with x-envoy-overloaded that
// is never retried (retry_state_impl.cc wouldRetryFromReset: overflow never retries);
// past max_connections a stream waits for a connection to free up instead.
func TestProviderCircuitBreakers(t *testing.T) {
	type result struct {
		st   int
		hdr  http.Header
		body string
	}
	tests := []struct {
		name       string
		thresholds string
		queued     string // a request that waits for A's connection ("" for none)
		overflow   string // a request that overflows ("" for none)
		wantCxOver bool
	}{
		{"max_pending_requests", "max_connections: 1, max_pending_requests: 1", "B", "C", true},
		{"max_requests", "max_requests: 1", "", "B", false},
		{"max_connections queues", "max_connections: 1", "B", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first := make(chan struct{})
			release := make(chan struct{})
			px, _, up := keypoolSetup(t, params{
				"Thresholds":  tc.thresholds,
				"RetryPolicy": "{retry_on: \"5xx,reset,connect-failure\", num_retries: 3, retry_back_off: {base_interval: 0.001s}}",
			}, nil, func(n int, w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-Test") == "A" {
					close(first)
					<-release
				}
				_, _ = w.Write([]byte("ok " + r.Header.Get("X-Test")))
			})
			send := func(name string) chan result {
				ch := make(chan result, 1)
				go func() {
					st, hdr, body := do(t, px, "GET", "/v1/models", "", map[string]string{"x-test": name})
					ch <- result{st, hdr, body}
				}()
				return ch
			}
			doneA := send("A")
			<-first
			res := px.clusters["openai"].res
			var queued chan result
			if tc.queued != "" {
				queued = send(tc.queued)
				waitFor(t, tc.queued+" to wait for a connection", func() bool {
					res.mu.Lock()
					defer res.mu.Unlock()
					return res.pending == 1
				})
			}
			if tc.overflow != "" {
				o := <-send(tc.overflow)
				if o.st != 503 || o.hdr.Get("X-Envoy-Overloaded") != "true" || !strings.Contains(o.body, "reset reason: overflow") {
					t.Errorf("%s: %d %v %q, want a 503 with x-envoy-overloaded and Envoy's overflow text", tc.overflow, o.st, o.hdr, o.body)
				}
			}
			close(release)
			if a := <-doneA; a.st != 200 {
				t.Fatalf("A: %d", a.st)
			}
			if queued != nil {
				if q := <-queued; q.st != 200 {
					t.Fatalf("%s: %d %q, want 200 once A's connection is free", tc.queued, q.st, q.body)
				}
				reqs := up.recorded()
				if len(reqs) != 2 || reqs[0].remote != reqs[1].remote {
					t.Errorf("%s did not reuse A's connection: %+v", tc.queued, reqs)
				}
			}
			if px.Stats().Retries != 0 {
				t.Errorf("an overflow was retried")
			}
			if (px.Stats().ConnectionOverflow > 0) != tc.wantCxOver {
				t.Errorf("connection overflow counted %d, want %v", px.Stats().ConnectionOverflow, tc.wantCxOver)
			}
		})
	}
}

// A retried response that has a body resets its upstream stream, which closes an
// HTTP/1.1 connection; one that ended with its headers (no body) leaves the connection
// to the next attempt; over HTTP/2 only the stream is reset (router.cc onUpstreamHeaders).
func TestRetriedResponseResetsHTTP1Connection(t *testing.T) {
	tests := []struct {
		name     string
		h2       bool
		body     bool
		wantSame bool
	}{
		{"HTTP/1.1 with a body", false, true, false},
		{"HTTP/1.1 without a body", false, false, true},
		{"HTTP/2 with a body", true, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := &upstream{handler: func(n int, w http.ResponseWriter, _ *http.Request) {
				if n == 0 {
					w.WriteHeader(http.StatusTooManyRequests)
					if tc.body {
						_, _ = w.Write([]byte(`{"error":"rate limited"}`))
					}
					return
				}
				_, _ = w.Write([]byte("ok"))
			}}
			up.srv = httptest.NewUnstartedServer(http.HandlerFunc(up.serve))
			p := params{}
			if tc.h2 {
				up.srv.Config.Protocols = new(http.Protocols)
				up.srv.Config.Protocols.SetUnencryptedHTTP2(true)
				p["UpstreamProtocol"] = "{http2_protocol_options: {}}"
			}
			up.srv.Start()
			t.Cleanup(up.srv.Close)
			ep := startFakeExtProc(t, markOn(429))
			px := startProxy(t, "keypool_cluster.yaml", p, map[string][]string{"openai": {up.addr()}, "keypool": {ep.addr}})
			if st, _, body := do(t, px, "POST", "/v1/chat/completions", "{}", nil); st != 200 {
				t.Fatalf("status %d %q", st, body)
			}
			reqs := up.recorded()
			if len(reqs) != 2 {
				t.Fatalf("%d attempts, want 2", len(reqs))
			}
			if same := reqs[0].remote == reqs[1].remote; same != tc.wantSame {
				t.Errorf("retry on the same connection = %v, want %v (%s, %s)", same, tc.wantSame, reqs[0].remote, reqs[1].remote)
			}
			if tc.h2 && reqs[1].proto != "HTTP/2.0" {
				t.Errorf("upstream protocol %s, want HTTP/2.0", reqs[1].proto)
			}
		})
	}
}
