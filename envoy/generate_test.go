package envoy_test

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

func readConfig(t *testing.T, yaml string) *config.Config {
	t.Helper()
	c, err := config.Read(strings.NewReader(yaml), fakeEnv)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return c
}

func generate(t *testing.T, yaml string) *bootstrapv3.Bootstrap {
	t.Helper()
	bs, err := envoy.Generate(readConfig(t, yaml))
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return bs
}

// pools builds the pools: section, one pool per name with n keys each.
func pools(spec ...string) string {
	var b strings.Builder
	b.WriteString("pools:\n")
	for _, s := range spec {
		b.WriteString(s)
	}
	return b.String()
}

func pool(name, provider string, keys int, extra string) string {
	var b strings.Builder
	b.WriteString("  - name: " + name + "\n    provider: " + provider + "\n" + extra + "    keys:\n")
	for i := range keys {
		id := name + "-" + string(rune('a'+i))
		b.WriteString("      - {id: " + id + ", secret: env:" + strings.ToUpper(strings.ReplaceAll(id, "-", "_")) + "}\n")
	}
	return b.String()
}

func hcmOf(t *testing.T, bs *bootstrapv3.Bootstrap) *hcmv3.HttpConnectionManager {
	t.Helper()
	h := &hcmv3.HttpConnectionManager{}
	if err := bs.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	return h
}

func clusterOptions(t *testing.T, c *clusterv3.Cluster) *httpv3.HttpProtocolOptions {
	t.Helper()
	o := &httpv3.HttpProtocolOptions{}
	if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(o); err != nil {
		t.Fatal(err)
	}
	return o
}

// Whatever the envoy-keypool config, the generated bootstrap survives the trip
// through YAML unchanged, loads as Envoy loads it and passes every check: the checks
// and the generator agree, and a user's config cannot make the generator emit
// something Envoy refuses.
func TestGeneratedConfigsLoadAndPassTheChecks(t *testing.T) {
	tests := []struct{ name, yaml string }{
		{"one pool, defaults", pools(pool("openai", "openai", 1, ""))},
		{"two providers, plain http upstreams", pools(
			pool("openai", "openai", 3, "    route: {upstream: \"http://mock:8080\"}\n"),
			pool("anthropic", "anthropic", 3, "    route: {upstream: \"http://mock:8080\"}\n"))},
		{"renamed headers and metadata key", "envoy: {retry_marker_header: x-pool-retry, pool_metadata_key: x-pool}\n" +
			pools(pool("p", "openai", 2, ""))},
		{"many keys, custom prefix and port", pools(pool("big", "anthropic", 12, "    route: {prefix: /claude/, upstream: \"https://llm.internal:8443\"}\n"))},
		{"nested prefixes", pools(
			pool("openai", "openai", 2, ""),
			pool("openai-eu", "openai", 2, "    route: {prefix: /openai/eu/}\n"))},
		{"replicas, ipv6 and redis", `
envoy:
  listen: "[::]:8000"
  admin_address: "[::1]:9901"
  keypool_addresses: ["keypool-a:9001", "keypool-b:9001", "[::1]:9001"]
  route_timeout: 30m
  request_body_buffer_limit: 1048576
  ca_file: /etc/pki/tls/certs/ca-bundle.crt
state:
  redis: {url: "redis://redis:6379", timeout: 100ms}
` + pools(pool("openai", "openai", 2, ""))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := readConfig(t, tt.yaml)
			bs, err := envoy.Generate(cfg)
			if err != nil {
				t.Fatal(err)
			}
			out, err := envoy.MarshalYAML(bs, "keypool.yaml")
			if err != nil {
				t.Fatal(err)
			}
			loaded, err := envoy.ParseBootstrap(out)
			if err != nil {
				t.Fatalf("the generated YAML does not load: %v\n%s", err, out)
			}
			if diff := cmp.Diff(bs, loaded, protocmp.Transform()); diff != "" {
				t.Errorf("YAML round trip changed the bootstrap (-generated +loaded):\n%s", diff)
			}
			if err := envoy.CheckLoad(loaded); err != nil {
				t.Errorf("CheckLoad: %v", err)
			}
			if err := envoy.CheckKeypool(loaded, cfg); err != nil {
				t.Errorf("CheckKeypool: %v", err)
			}
		})
	}
}

// An https upstream gets TLS with SNI and a certificate checked against the CA bundle
// and the host name; an http upstream (the mock provider) gets none. Either way the
// provider sees its own Host header and the path without the pool's prefix.
func TestProviderUpstream(t *testing.T) {
	tests := []struct {
		upstream       string
		wantAddr       string
		wantPort       uint32
		wantHostHeader string
		wantTLS        bool
	}{
		{"https://api.openai.com", "api.openai.com", 443, "api.openai.com", true},
		{"https://llm.internal:8443", "llm.internal", 8443, "llm.internal:8443", true},
		{"http://mock-provider:8080", "mock-provider", 8080, "mock-provider:8080", false},
		{"http://10.0.0.7", "10.0.0.7", 80, "10.0.0.7", false},
	}
	for _, tt := range tests {
		t.Run(tt.upstream, func(t *testing.T) {
			bs := generate(t, pools(pool("p", "openai", 2, "    route: {upstream: \""+tt.upstream+"\"}\n")))
			c := bs.GetStaticResources().GetClusters()[0]
			sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			if sa.GetAddress() != tt.wantAddr || sa.GetPortValue() != tt.wantPort {
				t.Errorf("endpoint %s:%d, want %s:%d", sa.GetAddress(), sa.GetPortValue(), tt.wantAddr, tt.wantPort)
			}
			a := hcmOf(t, bs).GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
			if a.GetHostRewriteLiteral() != tt.wantHostHeader || a.GetPrefixRewrite() != "/" {
				t.Errorf("route rewrites host %q path %q, want %q and /", a.GetHostRewriteLiteral(), a.GetPrefixRewrite(), tt.wantHostHeader)
			}
			if !tt.wantTLS {
				if c.GetTransportSocket() != nil {
					t.Error("plain http upstream has a transport socket")
				}
				return
			}
			tc := &tlsv3.UpstreamTlsContext{}
			if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(tc); err != nil {
				t.Fatal(err)
			}
			vc := tc.GetCommonTlsContext().GetValidationContext()
			if tc.GetSni() != tt.wantAddr || vc.GetTrustedCa().GetFilename() != "/etc/ssl/certs/ca-certificates.crt" {
				t.Errorf("sni %q ca %q", tc.GetSni(), vc.GetTrustedCa().GetFilename())
			}
			sans := vc.GetMatchTypedSubjectAltNames()
			if len(sans) != 1 || sans[0].GetSanType() != tlsv3.SubjectAltNameMatcher_DNS || sans[0].GetMatcher().GetExact() != tt.wantAddr {
				t.Errorf("certificate name not checked against %q: %v", tt.wantAddr, sans)
			}
		})
	}
}

// Each pool's cluster retries on the marker once per key, so the attempt after the
// last key is answered by envoy-keypool's exhaustion error, plus once for a reset
// before the request left; its ext_proc filter names the pool, sees headers only, may
// switch to the failure body mode and nothing else, and retries its stream on another
// replica.
func TestEachPoolFailsOverThroughItsKeys(t *testing.T) {
	bs := generate(t, "envoy: {retry_marker_header: x-failover}\n"+pools(
		pool("solo", "openai", 1, ""),
		pool("pair", "anthropic", 2, ""),
		pool("five", "openai", 5, "")))
	want := map[string]uint32{"solo": 2, "pair": 3, "five": 6}
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() == envoy.KeypoolCluster {
			continue
		}
		o := clusterOptions(t, c)
		rp := o.GetRetryPolicy()
		if rp.GetNumRetries().GetValue() != want[c.GetName()] {
			t.Errorf("%s: num_retries %d, want %d", c.GetName(), rp.GetNumRetries().GetValue(), want[c.GetName()])
		}
		if rp.GetRetryOn() != "retriable-headers,reset-before-request" || rp.GetRetriableHeaders()[0].GetName() != "x-failover" || !rp.GetRetriableHeaders()[0].GetPresentMatch() {
			t.Errorf("%s: retry policy %v", c.GetName(), rp)
		}
		if b := rp.GetRetryBackOff(); b.GetBaseInterval().AsDuration() > 25*time.Millisecond || b.GetMaxInterval().AsDuration() > 250*time.Millisecond {
			t.Errorf("%s: back-off %v is not short", c.GetName(), b)
		}
		if got := c.GetCircuitBreakers().GetThresholds()[0].GetMaxRetries().GetValue(); got != 1024 {
			t.Errorf("%s: max_retries %d", c.GetName(), got)
		}
		fs := o.GetHttpFilters()
		// Its own name: a route's per-filter configuration for "envoy.filters.http.ext_proc"
		// (another ext_proc filter's) does not reach it.
		if len(fs) != 2 || fs[0].GetName() != envoy.KeypoolFilterName || fs[1].GetName() != "envoy.filters.http.upstream_codec" {
			t.Fatalf("%s: upstream filters %v", c.GetName(), fs)
		}
		ep := &extprocv3.ExternalProcessor{}
		if err := fs[0].GetTypedConfig().UnmarshalTo(ep); err != nil {
			t.Fatal(err)
		}
		md := ep.GetGrpcService().GetInitialMetadata()
		if len(md) != 1 || md[0].GetKey() != "x-keypool-pool" || md[0].GetValue() != c.GetName() {
			t.Errorf("%s: initial_metadata %v", c.GetName(), md)
		}
		pm := ep.GetProcessingMode()
		if pm.GetRequestHeaderMode() != extprocv3.ProcessingMode_SEND || pm.GetResponseHeaderMode() != extprocv3.ProcessingMode_SEND ||
			pm.GetRequestTrailerMode() != extprocv3.ProcessingMode_SKIP || pm.GetResponseTrailerMode() != extprocv3.ProcessingMode_SKIP ||
			ep.GetMessageTimeout().AsDuration() != 200*time.Millisecond || ep.GetFailureModeAllow() {
			t.Errorf("%s: ext_proc %v", c.GetName(), ep)
		}
		wantMode := &extprocv3.ProcessingMode{
			RequestHeaderMode: extprocv3.ProcessingMode_SEND, ResponseHeaderMode: extprocv3.ProcessingMode_SEND,
			RequestBodyMode: extprocv3.ProcessingMode_NONE, ResponseBodyMode: extprocv3.ProcessingMode_BUFFERED,
			RequestTrailerMode: extprocv3.ProcessingMode_SKIP, ResponseTrailerMode: extprocv3.ProcessingMode_SKIP,
		}
		if !ep.GetAllowModeOverride() || len(ep.GetAllowedOverrideModes()) != 1 || !proto.Equal(ep.GetAllowedOverrideModes()[0], wantMode) {
			t.Errorf("%s: mode override allow %v, modes %v", c.GetName(), ep.GetAllowModeOverride(), ep.GetAllowedOverrideModes())
		}
		sr := ep.GetGrpcService().GetRetryPolicy()
		if sr.GetRetryOn() != "connect-failure,refused-stream,reset,unavailable" || sr.GetNumRetries().GetValue() < 1 ||
			len(sr.GetRetryHostPredicate()) != 1 || sr.GetRetryHostPredicate()[0].GetName() != "envoy.retry_host_predicates.previous_hosts" {
			t.Errorf("%s: stream retry policy %v", c.GetName(), sr)
		}
		// The stream retries happen inside the 200 ms message_timeout.
		if b := sr.GetRetryBackOff(); b.GetMaxInterval().AsDuration()*time.Duration(sr.GetNumRetries().GetValue()) >= ep.GetMessageTimeout().AsDuration()/2 {
			t.Errorf("%s: stream retry back-off %v does not fit in message_timeout", c.GetName(), b)
		}
	}
	if got := hcmOf(t, bs).GetRouteConfig().GetResponseHeadersToRemove(); len(got) != 1 || got[0] != "x-failover" {
		t.Errorf("response_headers_to_remove %v", got)
	}
}

// Routes are matched first to last: the longest prefix comes first whatever the
// order of the pools, and every route carries the configured timeout and body buffer.
func TestRoutes(t *testing.T) {
	bs := generate(t, "envoy: {route_timeout: 15m, request_body_buffer_limit: 2097152}\n"+pools(
		pool("a", "openai", 1, "    route: {prefix: /v/}\n"),
		pool("b", "openai", 1, "    route: {prefix: /v/eu/}\n"),
		pool("c", "anthropic", 1, "")))
	h := hcmOf(t, bs)
	var got []string
	for _, r := range h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes() {
		got = append(got, r.GetMatch().GetPrefix()+"→"+r.GetRoute().GetCluster())
		if r.GetRoute().GetTimeout().AsDuration() != 15*time.Minute || r.GetRequestBodyBufferLimit().GetValue() != 2097152 {
			t.Errorf("route %s: timeout %v buffer %v", r.GetName(), r.GetRoute().GetTimeout(), r.GetRequestBodyBufferLimit())
		}
		if r.GetRoute().GetRetryPolicy() != nil {
			t.Errorf("route %s has a retry policy: it lives on the cluster", r.GetName())
		}
	}
	if want := []string{"/v/eu/→b", "/v/→a", "/c/→c"}; !cmp.Equal(got, want) {
		t.Errorf("routes %v, want %v", got, want)
	}
	if h.GetStreamIdleTimeout().AsDuration() != 15*time.Minute {
		t.Errorf("stream_idle_timeout %v: a silent generation would be cut before the route timeout", h.GetStreamIdleTimeout())
	}
	vh := h.GetRouteConfig().GetVirtualHosts()[0]
	if !vh.GetIncludeRequestAttemptCount() || !h.GetUseRemoteAddress().GetValue() {
		t.Errorf("attempt count %v, use_remote_address %v", vh.GetIncludeRequestAttemptCount(), h.GetUseRemoteAddress())
	}
}

// The envoy-keypool replicas are one HTTP/2 cluster, every replica an endpoint health
// checked with the gRPC health service.
func TestKeypoolCluster(t *testing.T) {
	bs := generate(t, "envoy: {keypool_addresses: [\"k1:9001\", \"k2:9101\"]}\n"+pools(pool("p", "openai", 1, ""), pool("q", "openai", 1, "")))
	var c *clusterv3.Cluster
	for _, x := range bs.GetStaticResources().GetClusters() {
		if x.GetName() == envoy.KeypoolCluster {
			c = x
		}
	}
	if c == nil {
		t.Fatal("no envoy_keypool cluster")
	}
	var eps []string
	for _, lbe := range c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints() {
		sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
		eps = append(eps, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
	}
	if want := []string{"k1:9001", "k2:9101"}; !cmp.Equal(eps, want) || c.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Errorf("endpoints %v type %v", eps, c.GetType())
	}
	if clusterOptions(t, c).GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Error("not HTTP/2")
	}
	hc := c.GetHealthChecks()
	if len(hc) != 1 || hc[0].GetGrpcHealthCheck() == nil || hc[0].GetGrpcHealthCheck().GetServiceName() != "" {
		t.Errorf("health checks %v", hc)
	}
	if got := c.GetCircuitBreakers().GetThresholds()[0].GetMaxRequests().GetValue(); got != 2048 {
		t.Errorf("max_requests %d, want 1024 per provider cluster", got)
	}
}

// What the generated configuration cannot express is refused with the field to fix.
func TestGenerateRefuses(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"pool named like the envoy-keypool cluster", pools(pool("envoy_keypool", "openai", 1, "")), []string{`pools[0].name "envoy_keypool"`}},
		{"two pools on one prefix", pools(pool("a", "openai", 1, "    route: {prefix: /x/}\n"), pool("b", "openai", 1, "    route: {prefix: /x/}\n")),
			[]string{`pools[1].route.prefix "/x/" is also pool "a"'s`}},
		{"attempt count under another name", "envoy: {attempt_count_header: x-attempt}\n" + pools(pool("a", "openai", 1, "")),
			[]string{`envoy.attempt_count_header "x-attempt"`}},
		{"request id under another name", "envoy: {request_id_header: x-trace}\n" + pools(pool("a", "openai", 1, "")),
			[]string{`envoy.request_id_header "x-trace"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := envoy.Generate(readConfig(t, tt.yaml))
			if err == nil {
				t.Fatal("Generate accepted it")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q: %v", w, err)
				}
			}
		})
	}
}

// The YAML is the same bytes for the same config, says it is generated and how, and
// shows the defaults a reader must see even though protojson drops zero values.
func TestMarshalYAML(t *testing.T) {
	yaml := pools(pool("openai", "openai", 2, ""), pool("anthropic", "anthropic", 2, ""))
	var first []byte
	for i := range 3 {
		var buf bytes.Buffer
		if err := envoy.WriteConfig(&buf, readConfig(t, yaml), "conf/keypool.yaml"); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = buf.Bytes()
			continue
		}
		if !bytes.Equal(first, buf.Bytes()) {
			t.Fatal("two runs gave different bytes")
		}
	}
	text := string(first)
	if !strings.HasPrefix(text, "# Code generated by `envoy-keypool envoy-config --config conf/keypool.yaml`. DO NOT EDIT.\n") {
		t.Errorf("header:\n%s", text[:200])
	}
	// Per pool: the processing mode, and the one mode it may switch to.
	for want, n := range map[string]int{"failure_mode_allow: false": 2, "request_body_mode: NONE": 4, "response_body_mode: NONE": 2, "response_body_mode: BUFFERED": 2} {
		if got := strings.Count(text, want); got != n {
			t.Errorf("%q appears %d times, want %d", want, got, n)
		}
	}
	if strings.Contains(text, "{\"") || strings.Contains(text, "\"name\"") {
		t.Error("JSON flow style left in the YAML")
	}
}

// The Envoy section of the envoy-keypool config names the field of each problem.
func TestEnvoySectionErrors(t *testing.T) {
	tests := []struct{ envoy, want string }{
		{"admin_address: nine-nine-oh-one", "envoy.admin_address"},
		{"route_timeout: 500ms", "envoy.route_timeout: 500ms is shorter than 1s"},
		{"request_body_buffer_limit: 1024", "envoy.request_body_buffer_limit: 1024 bytes is below 64 KiB"},
		{"ca_file: certs/ca.pem", `envoy.ca_file: "certs/ca.pem" is not an absolute path`},
		{"listen: 10000", "envoy.listen"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := config.Read(strings.NewReader("envoy: {"+tt.envoy+"}\n"+pools(pool("p", "openai", 1, ""))), fakeEnv)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// envoy-config needs no secret: the config loads without the keys' variables set.
func TestReadWithoutSecrets(t *testing.T) {
	c, err := config.ReadWithoutSecrets(strings.NewReader(pools(pool("p", "openai", 3, ""))))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := c.Pool("p"); len(p.Keys) != 3 || len(p.ResolvedKeys()) != 0 {
		t.Errorf("pool %+v", p)
	}
	if _, err := envoy.Generate(c); err != nil {
		t.Error(err)
	}
	if _, err := config.ReadWithoutSecrets(strings.NewReader("pools: []\n")); err == nil {
		t.Error("an invalid config passed")
	}
}
