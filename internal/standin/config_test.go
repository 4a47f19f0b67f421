package standin

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/envoy"
)

// The stand-in refuses configuration it does not reproduce, naming the field, rather
// than running it with different behaviour than Envoy.
func TestNewRejectsUnsupported(t *testing.T) {
	tests := []struct {
		name        string
		from, to    string
		want        string
		unsupported bool
	}{
		{"buffered request body", "request_body_mode: NONE", "request_body_mode: BUFFERED", "request_body_mode BUFFERED", true},
		{"streamed response body", "response_body_mode: NONE", "response_body_mode: STREAMED", "response_body_mode STREAMED", true},
		{"trailers sent", "response_trailer_mode: SKIP", "response_trailer_mode: SEND", "response_trailer_mode SEND", true},
		{"google_grpc", "envoy_grpc: {cluster_name: keypool}", "google_grpc: {target_uri: \"127.0.0.1:1\", stat_prefix: kp}", "[google_grpc]", true},
		{"lb policy", "  - name: openai\n    type: STATIC", "  - name: openai\n    lb_policy: LEAST_REQUEST\n    type: STATIC", "lb_policy LEAST_REQUEST", true},
		{"unknown retry_on", "retry_on: retriable-headers", "retry_on: \"retriable-headers,sometimes\"", "unknown value \"sometimes\"", false},
		{"route to unknown cluster", "cluster: openai\n", "cluster: nowhere\n", "unknown cluster \"nowhere\"", false},
		{"ext_proc cluster without HTTP/2", "explicit_http_config: {http2_protocol_options: {}}", "explicit_http_config: {http_protocol_options: {}}", "must speak HTTP/2", false},
		{"http health check", "grpc_health_check: {}", "http_health_check: {path: /healthz}", "[http_health_check]", true},
		{"downstream filter", "          http_filters:\n          - name: envoy.filters.http.router", "          http_filters:\n          - name: envoy.filters.http.ext_proc\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor\n              grpc_service: {envoy_grpc: {cluster_name: keypool}}\n          - name: envoy.filters.http.router", "http_filters[0] \"envoy.filters.http.ext_proc\"", true},
		{"filter-specific per-route config", "              routes:\n", "              typed_per_filter_config: {envoy.filters.http.ext_proc: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, disabled: true}}\n              routes:\n", "typed_per_filter_config[\"envoy.filters.http.ext_proc\"]", true},
		{"other header formatter", "response_headers_to_remove: [x-keypool-retry]", "response_headers_to_remove: [x-keypool-retry]\n            request_headers_to_add: [{header: {key: x-m, value: \"%DYNAMIC_METADATA(ns:k)% %START_TIME%\"}}]", "other than DYNAMIC_METADATA", true},
		{"codec not last", "        - name: envoy.filters.http.upstream_codec\n          typed_config:\n            \"@type\": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec\n  - name: keypool", "  - name: keypool", "must end with envoy.filters.http.upstream_codec", false},
		{"header formatter", "response_headers_to_remove: [x-keypool-retry]", "response_headers_to_remove: [x-keypool-retry]\n            response_headers_to_add: [{header: {key: x-id, value: \"%REQ(x-request-id)%\"}}]", "substitution formatters", true},
		{"regex route", "match: {prefix: \"/v1/\"}", "match: {safe_regex: {regex: \"/v1/.*\"}}", "[safe_regex]", true},
	}
	base := string(fixture(t, "keypool_cluster.yaml", nil))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(base, tc.from) {
				t.Fatalf("fixture lacks %q", tc.from)
			}
			bs, err := envoy.ParseBootstrap([]byte(strings.Replace(base, tc.from, tc.to, 1)))
			if err != nil {
				t.Fatalf("the bootstrap itself must be valid Envoy config: %v", err)
			}
			_, err = New(bs, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error %v, want one containing %q", err, tc.want)
			}
			if errors.Is(err, ErrUnsupported) != tc.unsupported {
				t.Fatalf("errors.Is(err, ErrUnsupported) = %v, want %v", !tc.unsupported, tc.unsupported)
			}
		})
	}
	if _, err := New(nil, Options{}); err == nil {
		t.Fatal("nil bootstrap accepted")
	}
}

// Every fixture the tests use loads.
func TestFixturesLoad(t *testing.T) {
	for _, name := range []string{"keypool_cluster.yaml", "router_filters.yaml", "health.yaml", "tls.yaml"} {
		bs, err := envoy.ParseBootstrap(fixture(t, name, nil))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := New(bs, Options{}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// The Envoy configuration the project ships loads in the stand-in, so the e2e tests
// can run it as users will.
func TestShippedBootstrapsLoad(t *testing.T) {
	for _, path := range []string{"../../envoy/envoy.yaml", "../../envoy/compose/envoy.yaml"} {
		bs, err := envoy.LoadBootstrap(path)
		if errors.Is(err, os.ErrNotExist) {
			t.Logf("%s not present", path)
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if _, err := New(bs, Options{}); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
}
