package standin

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Point 7: which upstream outcomes the router retries, per retry_on
// (RetryStateImpl::wouldRetryFromHeaders / wouldRetryFromReset).
func TestRetryOn(t *testing.T) {
	fail := func(status int) func(int, http.ResponseWriter, *http.Request) {
		return func(n int, w http.ResponseWriter, _ *http.Request) {
			if n == 0 {
				w.WriteHeader(status)
				return
			}
			_, _ = w.Write([]byte("second"))
		}
	}
	reset := func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 0 {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = conn.Close()
			}
			return
		}
		_, _ = w.Write([]byte("second"))
	}
	policy := func(retryOn, extra string) string {
		return "{retry_on: \"" + retryOn + "\", num_retries: 2, retry_back_off: {base_interval: 0.001s}" + extra + "}"
	}
	tests := []struct {
		name      string
		policy    string
		marker    []int // statuses the fake ext_proc marks with x-keypool-retry
		handler   func(int, http.ResponseWriter, *http.Request)
		wantTries int
		want      int
	}{
		{"retriable-headers marker", policy("retriable-headers", ", retriable_headers: [{name: x-keypool-retry, present_match: true}]"), []int{429}, fail(429), 2, 200},
		{"retriable-headers exact match", policy("retriable-headers", ", retriable_headers: [{name: x-keypool-retry, string_match: {exact: \"1\"}}]"), []int{401}, fail(401), 2, 200},
		{"retriable-headers no marker", policy("retriable-headers", ", retriable_headers: [{name: x-keypool-retry, present_match: true}]"), nil, fail(429), 1, 429},
		{"retriable-status-codes", policy("retriable-status-codes", ", retriable_status_codes: [429]"), nil, fail(429), 2, 200},
		{"retriable-status-codes other code", policy("retriable-status-codes", ", retriable_status_codes: [429]"), nil, fail(403), 1, 403},
		{"5xx on 500", policy("5xx", ""), nil, fail(500), 2, 200},
		{"5xx on 4xx", policy("5xx", ""), nil, fail(429), 1, 429},
		{"gateway-error on 503", policy("gateway-error", ""), nil, fail(503), 2, 200},
		{"gateway-error on 500", policy("gateway-error", ""), nil, fail(500), 1, 500},
		{"retriable-4xx on 409", policy("retriable-4xx", ""), nil, fail(409), 2, 200},
		{"reset", policy("reset", ""), nil, reset, 2, 200},
		{"5xx covers reset", policy("5xx", ""), nil, reset, 2, 200},
		{"reset not retried by retriable-headers", policy("retriable-headers", ""), nil, reset, 1, 503},
		// The request reached the upstream (its headers were encoded): not "before
		// request" (retry_state_impl.cc wouldRetryFromReset, upstream_codec_filter.cc).
		{"reset after the request, reset-before-request", policy("retriable-headers,reset-before-request", ""), nil, reset, 1, 503},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			px, _, up := keypoolSetup(t, params{"RetryPolicy": tc.policy}, markOn(tc.marker...), tc.handler)
			st, hdr, _ := do(t, px, "POST", "/v1/chat/completions", "{}", nil)
			if st != tc.want {
				t.Fatalf("status %d, want %d", st, tc.want)
			}
			if n := len(up.recorded()); n != tc.wantTries {
				t.Fatalf("%d attempts, want %d", n, tc.wantTries)
			}
			if hdr.Get("X-Keypool-Retry") != "" {
				t.Errorf("retry marker reached the client")
			}
		})
	}
}

// Point 7 (connect-failure) and point 9 (round robin): the first endpoint refuses
// connections, the router retries and round robin moves on to the second.
func TestRetryOnConnectFailure(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	_ = closed.Close()
	tests := []struct {
		retryOn string
		want    int
	}{
		{"connect-failure", 200},
		// A connect failure falls through to reset-before-request: nothing was sent.
		{"reset-before-request", 200},
		{"retriable-headers", 503},
	}
	for _, tc := range tests {
		t.Run(tc.retryOn, func(t *testing.T) {
			up := startUpstream(t, nil)
			ep := startFakeExtProc(t, nil)
			px := startProxy(t, "keypool_cluster.yaml", params{"RetryPolicy": "{retry_on: " + tc.retryOn + ", retry_back_off: {base_interval: 0.001s}}"},
				map[string][]string{"openai": {deadAddr, up.addr()}, "keypool": {ep.addr}})
			st, _, body := do(t, px, "GET", "/v1/models", "", nil)
			if st != tc.want {
				t.Fatalf("status %d %q, want %d", st, body, tc.want)
			}
			if tc.want == 503 && !strings.Contains(body, "upstream connect error") {
				t.Errorf("body %q, want Envoy's connect error text", body)
			}
		})
	}
}

// Point 7: when retries run out the client gets the last upstream response, without
// the retry marker (response_headers_to_remove); num_retries defaults to 1.
func TestRetriesExhaustedForwardLastResponse(t *testing.T) {
	px, _, up := keypoolSetup(t, params{"RetryPolicy": "{retry_on: retriable-headers, retry_back_off: {base_interval: 0.001s}, retriable_headers: [{name: x-keypool-retry}]}"},
		markOn(429), func(n int, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("X-Attempt", string(rune('a'+n)))
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte("limited " + string(rune('a'+n))))
		})
	st, hdr, body := do(t, px, "POST", "/v1/chat/completions", "{}", nil)
	if st != 429 || body != "limited b" || hdr.Get("X-Attempt") != "b" {
		t.Fatalf("got %d %q attempt %q, want the second (last) response", st, body, hdr.Get("X-Attempt"))
	}
	if n := len(up.recorded()); n != 2 {
		t.Fatalf("%d attempts, want 2 (num_retries default 1)", n)
	}
	if hdr.Get("X-Keypool-Retry") != "" {
		t.Fatal("retry marker reached the client")
	}
	if s := px.Stats(); s.Retries != 1 || s.RetryLimitExceeded != 1 {
		t.Fatalf("stats %+v, want 1 retry and 1 limit exceeded", s)
	}
}

// Point 7: the fully jittered exponential back-off of retry_state_impl.cc: retry n
// waits in [0, base·2^(n-1)), capped at max_interval (10 × base by default).
func TestJitteredBackoff(t *testing.T) {
	maxRand := func() uint64 { return ^uint64(0) >> 1 }
	b := newJitteredBackoff(25*time.Millisecond, 250*time.Millisecond, maxRand)
	var got []time.Duration
	for range 7 {
		got = append(got, b.nextBackoff())
	}
	// With the largest random number the delay is the top of each interval minus a
	// remainder; check each delay stays inside its interval and the cap holds.
	limits := []time.Duration{25, 50, 100, 200, 250, 250, 250}
	for i, d := range got {
		if d < 0 || d >= limits[i]*time.Millisecond {
			t.Errorf("retry %d waited %s, want in [0, %dms)", i+1, d, limits[i])
		}
	}
	seq := []uint64{24, 49, 99, 199, 249}
	i := 0
	b = newJitteredBackoff(25*time.Millisecond, 250*time.Millisecond, func() uint64 { v := seq[i]; i++; return v })
	for n, want := range []time.Duration{24, 49, 99, 199, 249} {
		if d := b.nextBackoff(); d != want*time.Millisecond {
			t.Errorf("retry %d: %s, want %dms (random %d below interval)", n+1, d, want, seq[n])
		}
	}
	if d := lowerBoundBackoff(2*time.Second, func() uint64 { return 0 }); d != 2*time.Second {
		t.Errorf("rate-limited back-off lower bound %s, want 2s", d)
	}
	if d := lowerBoundBackoff(2*time.Second, func() uint64 { return 999 }); d != 2999*time.Millisecond {
		t.Errorf("rate-limited back-off %s, want 2.999s", d)
	}
}

// rate_limited_retry_back_off only sets the delay of a retry that the policy already
// decided; it never causes one.
func TestRateLimitedBackoffNeverCausesRetry(t *testing.T) {
	px, _, up := keypoolSetup(t, params{"RetryPolicy": "{retry_on: retriable-status-codes, retriable_status_codes: [503], rate_limited_retry_back_off: {reset_headers: [{name: retry-after}]}}"},
		nil, func(_ int, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		})
	if st, _, _ := do(t, px, "GET", "/v1/models", "", nil); st != 429 {
		t.Fatalf("status %d, want 429", st)
	}
	if n := len(up.recorded()); n != 1 {
		t.Fatalf("%d attempts: a reset header caused a retry", n)
	}
	p := &retryPolicy{resetHeaders: []resetHeader{{name: "retry-after"}, {name: "x-reset", unixTimestamp: true}}, resetMaxInterval: 300 * time.Second}
	now := time.Unix(1000, 0)
	if d, ok := p.parseResetInterval(mapOf("retry-after", "7"), now); !ok || d != 7*time.Second {
		t.Errorf("SECONDS reset = %s %v, want 7s", d, ok)
	}
	if d, ok := p.parseResetInterval(mapOf("x-reset", "1010"), now); !ok || d != 10*time.Second {
		t.Errorf("UNIX_TIMESTAMP reset = %s %v, want 10s", d, ok)
	}
	if _, ok := p.parseResetInterval(mapOf("retry-after", "301"), now); ok {
		t.Error("reset above max_interval used")
	}
}

// Point 7: the cluster circuit breaker's max_retries caps retries in flight per
// cluster; past it the retry is refused and the failed response forwarded
// (RetryStateImpl::shouldRetry, upstream_rq_retry_overflow).
func TestCircuitBreakerMaxRetries(t *testing.T) {
	secondAttemptOfA := make(chan struct{})
	release := make(chan struct{})
	px, _, _ := keypoolSetup(t, params{"MaxRetries": "1"}, markOn(429), func(n int, w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Envoy-Attempt-Count") == "1" {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		if r.Header.Get("X-Test") == "A" {
			close(secondAttemptOfA)
			<-release
		}
		_, _ = w.Write([]byte("ok"))
	})
	doneA := make(chan int, 1)
	go func() {
		st, _, _ := do(t, px, "GET", "/v1/models", "", map[string]string{"x-test": "A"})
		doneA <- st
	}()
	<-secondAttemptOfA // A holds the only retry slot while its retry runs.
	st, hdr, _ := do(t, px, "GET", "/v1/models", "", map[string]string{"x-test": "B"})
	close(release)
	if st != 429 {
		t.Fatalf("B got %d, want the failed 429 forwarded", st)
	}
	if hdr.Get("X-Keypool-Retry") != "" {
		t.Error("marker leaked")
	}
	if got := <-doneA; got != 200 {
		t.Fatalf("A got %d, want 200 after its retry", got)
	}
	if s := px.Stats(); s.RetriesOverflow != 1 || s.Retries != 1 {
		t.Fatalf("stats %+v, want 1 retry and 1 overflow", s)
	}
}

// Point 7: the request body is buffered and replayed on every attempt; a body larger
// than the buffer limit streams once and the retry is abandoned (router.cc decodeData).
func TestRequestBodyReplay(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantTries int
		want      int
	}{
		{"within limit, replayed", strings.Repeat("a", 32), 2, 200},
		{"over limit, no retry", strings.Repeat("b", 33), 1, 429},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			px, _, up := keypoolSetup(t, params{"BufferLimit": "32"}, markOn(429), func(n int, w http.ResponseWriter, _ *http.Request) {
				if n == 0 {
					w.WriteHeader(http.StatusTooManyRequests)
				}
			})
			st, _, _ := do(t, px, "POST", "/v1/chat/completions", tc.body, nil)
			if st != tc.want {
				t.Fatalf("status %d, want %d", st, tc.want)
			}
			reqs := up.recorded()
			if len(reqs) != tc.wantTries {
				t.Fatalf("%d attempts, want %d", len(reqs), tc.wantTries)
			}
			for i, r := range reqs {
				if r.body != tc.body {
					t.Errorf("attempt %d body %d bytes, want the full %d", i+1, len(r.body), len(tc.body))
				}
			}
		})
	}
}

// Point 7: a cluster-level retry_policy (HttpProtocolOptions, Envoy ≥ 1.37) replaces
// the route's policy entirely: no merge.
func TestClusterRetryPolicyReplacesRoute(t *testing.T) {
	p := params{"ClusterRetryPolicy": "{retry_on: retriable-status-codes, retriable_status_codes: [503], num_retries: 1, retry_back_off: {base_interval: 0.001s}}"}
	tests := []struct {
		status    int
		wantTries int
	}{
		{503, 2}, // the cluster's policy retries 503
		{429, 1}, // the route's retriable-headers policy no longer applies
	}
	for _, tc := range tests {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			px, _, up := keypoolSetup(t, p, markOn(429), func(n int, w http.ResponseWriter, _ *http.Request) {
				if n == 0 {
					w.WriteHeader(tc.status)
				}
			})
			do(t, px, "GET", "/v1/models", "", nil)
			if n := len(up.recorded()); n != tc.wantTries {
				t.Fatalf("%d attempts, want %d", n, tc.wantTries)
			}
		})
	}
	// The cluster policy's per_try_timeout is ignored; the route's is used.
	pol := &retryPolicy{perTryTimeout: time.Second}
	c := &upstreamCluster{cfg: &clusterConfig{retry: &retryPolicy{retryOn: retryOn5xx, perTryTimeout: time.Hour}}}
	got := (&Proxy{}).effectiveRetryPolicy(&virtualHost{}, &route{retry: pol}, c)
	if got.perTryTimeout != time.Second || got.retryOn != retryOn5xx {
		t.Fatalf("effective policy %+v, want cluster retry_on with the route's per_try_timeout", got)
	}
}
