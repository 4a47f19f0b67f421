package standin

import (
	"net/http"
	"testing"
)

// x-request-id follows UUIDRequestIDExtension::set and the edge/internal decision of
// ConnectionManagerUtility::mutateRequestHeaders (conn_manager_utility.cc): with
// use_remote_address and no internal_address_config no client is internal (not even a
// loopback one), so a client's id is replaced; an internal client (per
// internal_address_config), preserve_external_request_id, or a connection manager that
// does not use the remote address keep it.
func TestRequestIDFromClients(t *testing.T) {
	const clientID = "client-chosen-id"
	tests := []struct {
		name     string
		hcm      string
		clientID string
		extraHdr map[string]string
		wantKept bool
		wantEdge bool // x-envoy-external-address set
	}{
		{"edge replaces the client's id", "use_remote_address: true", clientID, nil, false, true},
		{"edge with preserve_external_request_id keeps it", "use_remote_address: true" + nl + "preserve_external_request_id: true", clientID, nil, true, true},
		{"loopback client internal by internal_address_config", "use_remote_address: true" + nl + "internal_address_config: {}", clientID, nil, true, false},
		{"internal_address_config with other ranges", "use_remote_address: true" + nl + "internal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}", clientID, nil, false, true},
		{"a client x-forwarded-for is never internal", "use_remote_address: true" + nl + "internal_address_config: {}", clientID, map[string]string{"X-Forwarded-For": "127.0.0.1"}, false, true},
		{"without use_remote_address the id is kept", "use_remote_address: false", clientID, nil, true, false},
		{"generated when absent", "use_remote_address: true", "", nil, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			px, ep, up := keypoolSetup(t, params{"HCMExtra": tc.hcm}, nil, nil)
			hdr := map[string]string{}
			for k, v := range tc.extraHdr {
				hdr[k] = v
			}
			if tc.clientID != "" {
				hdr["x-request-id"] = tc.clientID
			}
			if st, _, _ := do(t, px, "GET", "/v1/models", "", hdr); st != 200 {
				t.Fatalf("status %d", st)
			}
			got := up.recorded()[0].header
			id := got.Get("X-Request-Id")
			if id == "" {
				t.Fatal("no x-request-id upstream")
			}
			if kept := id == clientID; kept != tc.wantKept {
				t.Errorf("x-request-id %q: kept = %v, want %v", id, kept, tc.wantKept)
			}
			if seen, _ := headerOf(ep.recorded()[0].requests[0], "x-request-id"); seen != id {
				t.Errorf("ext_proc saw x-request-id %q, upstream %q", seen, id)
			}
			if edge := got.Get("X-Envoy-External-Address") != ""; edge != tc.wantEdge {
				t.Errorf("x-envoy-external-address %q, want edge %v", got.Get("X-Envoy-External-Address"), tc.wantEdge)
			}
		})
	}
}

// nl continues a fixture's HCMExtra block on the next line.
const nl = "\n          "

// The router's x-envoy-* controls are stripped from every request that is not
// internal (cleanInternalHeaders in conn_manager_utility.cc), so an external client
// cannot make Envoy retry a billed request; from an internal client they are honoured
// and then consumed by the router (RetryStateImpl::create in retry_state_impl.cc,
// FilterUtility::finalTimeout in router.cc).
func TestRouterControlHeadersFromClients(t *testing.T) {
	controls := map[string]string{
		"x-envoy-retry-on":                       "5xx",
		"x-envoy-max-retries":                    "2",
		"x-envoy-upstream-rq-per-try-timeout-ms": "4000",
		"x-envoy-retriable-status-codes":         "500",
		"x-envoy-original-path":                  "/forged",
	}
	tests := []struct {
		name      string
		hcm       string
		wantTries int
		wantOrig  bool // x-envoy-original-path survives (only non-edge requests keep it)
	}{
		{"external edge client", "use_remote_address: true", 1, false},
		{"external, not edge", "use_remote_address: false", 1, true},
		{"internal client", "use_remote_address: true" + nl + "internal_address_config: {}", 3, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			px, ep, up := keypoolSetup(t, params{"HCMExtra": tc.hcm, "RetryPolicy": "{retry_on: retriable-headers, num_retries: 0, retry_back_off: {base_interval: 0.001s}}"}, nil,
				func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) })
			st, _, _ := do(t, px, "POST", "/v1/chat/completions", "{}", controls)
			if st != 500 {
				t.Fatalf("status %d, want the upstream's 500", st)
			}
			reqs := up.recorded()
			if len(reqs) != tc.wantTries {
				t.Fatalf("%d attempts, want %d", len(reqs), tc.wantTries)
			}
			for _, r := range reqs {
				for _, k := range []string{"X-Envoy-Retry-On", "X-Envoy-Max-Retries", "X-Envoy-Upstream-Rq-Per-Try-Timeout-Ms", "X-Envoy-Retriable-Status-Codes"} {
					if v := r.header.Get(k); v != "" {
						t.Errorf("%s = %q reached the upstream", k, v)
					}
				}
				if has := r.header.Get("X-Envoy-Original-Path") == "/forged"; has != tc.wantOrig {
					t.Errorf("forged x-envoy-original-path upstream: %v, want %v", has, tc.wantOrig)
				}
			}
			if v, ok := headerOf(ep.recorded()[0].requests[0], "x-envoy-retry-on"); ok {
				t.Errorf("ext_proc saw x-envoy-retry-on %q", v)
			}
			if tc.wantTries > 1 {
				// The header's per-try timeout is the expected timeout the upstream sees.
				if got := reqs[0].header.Get("X-Envoy-Expected-Rq-Timeout-Ms"); got != "4000" {
					t.Errorf("x-envoy-expected-rq-timeout-ms %q, want 4000 from the per-try header", got)
				}
			}
		})
	}
}

// With use_remote_address the client's address is appended to x-forwarded-for (the
// listener's own address for a loopback peer), x-forwarded-proto is overwritten and
// connection-specific headers go (conn_manager_utility.cc).
func TestForwardedHeaders(t *testing.T) {
	px, _, up := keypoolSetup(t, params{"HCMExtra": "use_remote_address: true"}, nil, nil)
	if st, _, _ := do(t, px, "GET", "/v1/models", "", map[string]string{"X-Forwarded-Proto": "https", "Te": "trailers, deflate", "Proxy-Connection": "keep-alive"}); st != 200 {
		t.Fatalf("status %d", st)
	}
	h := up.recorded()[0].header
	if got := h.Get("X-Forwarded-For"); got != "127.0.0.1" {
		t.Errorf("x-forwarded-for %q, want 127.0.0.1", got)
	}
	if got := h.Get("X-Forwarded-Proto"); got != "http" {
		t.Errorf("x-forwarded-proto %q, want http (the client's value is untrusted)", got)
	}
	if got := h.Get("X-Envoy-External-Address"); got != "127.0.0.1" {
		t.Errorf("x-envoy-external-address %q", got)
	}
	if got := h.Get("Proxy-Connection"); got != "" {
		t.Errorf("proxy-connection %q forwarded", got)
	}
}
