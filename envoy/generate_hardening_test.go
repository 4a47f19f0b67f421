package envoy_test

import (
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	jsontometadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/google/go-cmp/cmp"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

func clusterIn(t *testing.T, cs []*clusterv3.Cluster, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range cs {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

func extProcOf(t *testing.T, c *clusterv3.Cluster) *extprocv3.ExternalProcessor {
	t.Helper()
	ep := &extprocv3.ExternalProcessor{}
	if err := clusterOptions(t, c).GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(ep); err != nil {
		t.Fatal(err)
	}
	return ep
}

// Every limit of a provider cluster comes from route.max_concurrent_requests, and its
// idle connections close before the provider's keep-alive would close them.
func TestProviderClusterLimits(t *testing.T) {
	bs := generate(t, pools(
		pool("small", "openai", 2, "    route: {max_concurrent_requests: 64, idle_timeout: 4s}\n"),
		pool("default", "anthropic", 2, "")))
	cs := bs.GetStaticResources().GetClusters()
	for name, want := range map[string]struct {
		n    uint32
		idle time.Duration
	}{"small": {64, 4 * time.Second}, "default": {1024, time.Minute}} {
		c := clusterIn(t, cs, name)
		th := c.GetCircuitBreakers().GetThresholds()[0]
		got := []uint32{th.GetMaxConnections().GetValue(), th.GetMaxPendingRequests().GetValue(), th.GetMaxRequests().GetValue(), th.GetMaxRetries().GetValue()}
		if !cmp.Equal(got, []uint32{want.n, want.n, want.n, want.n}) {
			t.Errorf("%s: connections, pending, requests, retries %v, want all %d", name, got, want.n)
		}
		if idle := clusterOptions(t, c).GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration(); idle != want.idle {
			t.Errorf("%s: idle_timeout %v, want %v", name, idle, want.idle)
		}
	}
	// One ext_proc stream per provider request in flight, and each may retry at once.
	th := clusterIn(t, cs, envoy.KeypoolCluster).GetCircuitBreakers().GetThresholds()[0]
	if th.GetMaxRequests().GetValue() != 1088 || th.GetMaxPendingRequests().GetValue() != 1088 || th.GetMaxRetries().GetValue() != 1088 {
		t.Errorf("envoy_keypool limits %v, want 64+1024 each", th)
	}
}

// What Envoy tells the provider about the client is removed where Envoy allows it,
// while x-envoy-attempt-count, which envoy-keypool reads, stays.
func TestClientIdentityStaysWithEnvoy(t *testing.T) {
	h := hcmOf(t, generate(t, pools(pool("p", "openai", 1, ""))))
	if got, want := h.GetRouteConfig().GetRequestHeadersToRemove(), []string{"x-forwarded-for", "x-forwarded-proto", "x-envoy-external-address"}; !cmp.Equal(got, want) {
		t.Errorf("request_headers_to_remove %v, want %v", got, want)
	}
	router := &routerv3.Router{}
	fs := h.GetHttpFilters()
	if err := fs[len(fs)-1].GetTypedConfig().UnmarshalTo(router); err != nil {
		t.Fatal(err)
	}
	if !router.GetSuppressEnvoyHeaders() {
		t.Error("router does not suppress x-envoy-expected-rq-timeout-ms and x-envoy-original-path")
	}
	if !h.GetRouteConfig().GetVirtualHosts()[0].GetIncludeRequestAttemptCount() {
		t.Error("x-envoy-attempt-count lost")
	}
}

// The model of a JSON body is read by json_to_metadata, skipped unless the body has a
// content-length within the buffer limit, and forwarded to envoy-keypool as metadata
// by the pools whose provider names it there; Gemini's route skips the filter.
func TestModelFromTheJSONBody(t *testing.T) {
	bodyless := "gemini"
	if _, err := readConfigErr(pools(pool("gm", "gemini", 1, ""))); err != nil {
		bodyless = "" // until the gemini provider lands, no pool names its model in the path only
	}
	spec := []string{pool("oa", "openai", 1, "")}
	if bodyless != "" {
		spec = append(spec, pool("gm", bodyless, 1, ""))
	}
	bs := generate(t, "envoy: {request_body_buffer_limit: 1048576}\n"+pools(spec...))
	h := hcmOf(t, bs)
	f := h.GetHttpFilters()[0]
	if f.GetName() != "envoy.filters.http.json_to_metadata" {
		t.Fatalf("first filter %q", f.GetName())
	}
	w := &matchingv3.ExtensionWithMatcher{}
	if err := f.GetTypedConfig().UnmarshalTo(w); err != nil {
		t.Fatal(err)
	}
	j := &jsontometadatav3.JsonToMetadata{}
	if err := w.GetExtensionConfig().GetTypedConfig().UnmarshalTo(j); err != nil {
		t.Fatal(err)
	}
	rule := j.GetRequestRules().GetRules()[0]
	if rule.GetSelectors()[0].GetKey() != "model" || rule.GetOnPresent().GetMetadataNamespace() != envoy.ModelMetadataNamespace ||
		rule.GetOnPresent().GetKey() != envoy.ModelMetadataKey || rule.GetOnMissing() != nil || rule.GetOnError() != nil {
		t.Errorf("rule %v", rule)
	}
	pred := w.GetXdsMatcher().GetMatcherList().GetMatchers()[0].GetPredicate().GetNotMatcher().GetSinglePredicate()
	if re := pred.GetValueMatch().GetSafeRegex().GetRegex(); re != "^[0-9]{1,6}$" {
		t.Errorf("content-length regex %q, want bodies up to 999999 bytes (1 MiB limit)", re)
	}
	for _, r := range h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes() {
		disabled := false
		if a := r.GetTypedPerFilterConfig()["envoy.filters.http.json_to_metadata"]; a != nil {
			fc := &routev3.FilterConfig{}
			if err := a.UnmarshalTo(fc); err != nil {
				t.Fatal(err)
			}
			disabled = fc.GetDisabled()
		}
		if disabled != (r.GetName() == "gm") {
			t.Errorf("route %s: json_to_metadata disabled %v", r.GetName(), disabled)
		}
	}
	cs := bs.GetStaticResources().GetClusters()
	if ns := extProcOf(t, clusterIn(t, cs, "oa")).GetMetadataOptions().GetForwardingNamespaces().GetUntyped(); !cmp.Equal(ns, []string{"envoy-keypool"}) {
		t.Errorf("openai forwards %v", ns)
	}
	if bodyless == "" {
		return
	}
	if mo := extProcOf(t, clusterIn(t, cs, "gm")).GetMetadataOptions(); mo != nil {
		t.Errorf("gemini forwards %v", mo)
	}
	// A configuration of Gemini pools only has no body filter at all.
	if fs := hcmOf(t, generate(t, pools(pool("gm", "gemini", 1, "")))).GetHttpFilters(); len(fs) != 1 {
		t.Errorf("%d filters for a Gemini-only configuration, want the router alone", len(fs))
	}
}

// envoy-keypool over a Unix socket is a static cluster of pipe addresses; over TLS a
// transport socket that checks the replicas' name and offers h2, with Envoy's client
// certificate for mutual TLS.
func TestKeypoolClusterTransports(t *testing.T) {
	t.Run("unix socket", func(t *testing.T) {
		bs := generate(t, "envoy: {keypool_addresses: [\"unix:/run/envoy-keypool/extproc.sock\", \"unix:///run/b.sock\"]}\n"+pools(pool("p", "openai", 1, "")))
		c := clusterIn(t, bs.GetStaticResources().GetClusters(), envoy.KeypoolCluster)
		var paths []string
		for _, lbe := range c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints() {
			paths = append(paths, lbe.GetEndpoint().GetAddress().GetPipe().GetPath())
		}
		if c.GetType() != clusterv3.Cluster_STATIC || !cmp.Equal(paths, []string{"/run/envoy-keypool/extproc.sock", "/run/b.sock"}) {
			t.Errorf("type %v, pipes %v", c.GetType(), paths)
		}
		if c.GetDnsLookupFamily() != clusterv3.Cluster_AUTO {
			t.Errorf("dns_lookup_family %v on a static cluster", c.GetDnsLookupFamily())
		}
	})
	t.Run("mutual TLS", func(t *testing.T) {
		bs := generate(t, `
envoy:
  keypool_addresses: ["keypool:9001"]
  keypool_tls: {ca_file: /etc/envoy/keypool-ca.pem, server_name: envoy-keypool.internal, cert_file: /etc/envoy/client.pem, key_file: /etc/envoy/client.key}
`+pools(pool("p", "openai", 1, "")))
		c := clusterIn(t, bs.GetStaticResources().GetClusters(), envoy.KeypoolCluster)
		tc := &tlsv3.UpstreamTlsContext{}
		if c.GetTransportSocket().GetName() != "envoy.transport_sockets.tls" || c.GetTransportSocket().GetTypedConfig().UnmarshalTo(tc) != nil {
			t.Fatalf("transport socket %v", c.GetTransportSocket())
		}
		vc := tc.GetCommonTlsContext().GetValidationContext()
		cert := tc.GetCommonTlsContext().GetTlsCertificates()
		if tc.GetSni() != "envoy-keypool.internal" || vc.GetTrustedCa().GetFilename() != "/etc/envoy/keypool-ca.pem" ||
			vc.GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact() != "envoy-keypool.internal" ||
			vc.GetMatchTypedSubjectAltNames()[0].GetSanType() != tlsv3.SubjectAltNameMatcher_DNS ||
			len(cert) != 1 || cert[0].GetCertificateChain().GetFilename() != "/etc/envoy/client.pem" || cert[0].GetPrivateKey().GetFilename() != "/etc/envoy/client.key" ||
			!cmp.Equal(tc.GetCommonTlsContext().GetAlpnProtocols(), []string{"h2"}) {
			t.Errorf("tls %v", tc)
		}
	})
	t.Run("server TLS only", func(t *testing.T) {
		bs := generate(t, "envoy: {keypool_tls: {ca_file: /ca.pem, server_name: kp}}\n"+pools(pool("p", "openai", 1, "")))
		tc := &tlsv3.UpstreamTlsContext{}
		if err := clusterIn(t, bs.GetStaticResources().GetClusters(), envoy.KeypoolCluster).GetTransportSocket().GetTypedConfig().UnmarshalTo(tc); err != nil {
			t.Fatal(err)
		}
		if len(tc.GetCommonTlsContext().GetTlsCertificates()) != 0 {
			t.Error("a client certificate without cert_file")
		}
	})
}

// The envoy-keypool cluster reaches another replica inside one message_timeout: its
// connect timeout is a fraction of it, and dead connections are found by keepalive.
func TestKeypoolClusterFailsFast(t *testing.T) {
	bs := generate(t, pools(pool("p", "openai", 1, "")))
	c := clusterIn(t, bs.GetStaticResources().GetClusters(), envoy.KeypoolCluster)
	mt := extProcOf(t, clusterIn(t, bs.GetStaticResources().GetClusters(), "p")).GetMessageTimeout().AsDuration()
	if ct := c.GetConnectTimeout().AsDuration(); ct*2 > mt {
		t.Errorf("connect_timeout %v leaves no room for a retry in message_timeout %v", ct, mt)
	}
	ka := clusterOptions(t, c).GetExplicitHttpConfig().GetHttp2ProtocolOptions().GetConnectionKeepalive()
	// envoy-keypool's server refuses pings closer than 5 s (GOAWAY too_many_pings).
	if ka.GetInterval().AsDuration() < 5*time.Second || ka.GetTimeout() == nil {
		t.Errorf("keepalive %v", ka)
	}
	hc := c.GetHealthChecks()[0]
	if hc.GetInterval().AsDuration()+hc.GetTimeout().AsDuration() > 10*time.Second || hc.GetIntervalJitter() != nil {
		t.Errorf("health check %v: a replica draining for the default 10s would not be out in time", hc)
	}
}

// Settings the generated keypool cluster cannot express are refused naming the field.
func TestKeypoolSettingsRefused(t *testing.T) {
	for _, tt := range []struct{ envoy, want string }{
		{`keypool_addresses: ["unix:/a.sock", "k:9001"]`, "envoy.keypool_addresses: mixes unix: sockets and host:port"},
		{`keypool_addresses: ["unix:relative.sock"]`, "envoy.keypool_addresses[0]"},
		{`keypool_tls: {server_name: kp}`, "envoy.keypool_tls.ca_file: required"},
		{`keypool_tls: {ca_file: /ca, server_name: "kp:9001"}`, "envoy.keypool_tls.server_name"},
		{`keypool_tls: {ca_file: /ca, server_name: kp, cert_file: /c.pem}`, "cert_file and key_file go together"},
	} {
		_, err := readConfigErr("envoy: {" + tt.envoy + "}\n" + pools(pool("p", "openai", 1, "")))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.envoy, err, tt.want)
		}
	}
	for _, tt := range []struct{ route, want string }{
		{"idle_timeout: 100ms", "pools[0].route.idle_timeout"},
		{"max_concurrent_requests: -1", "pools[0].route.max_concurrent_requests"},
	} {
		_, err := readConfigErr(pools(pool("p", "openai", 1, "    route: {"+tt.route+"}\n")))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.route, err, tt.want)
		}
	}
}

func readConfigErr(yaml string) (*config.Config, error) {
	return config.Read(strings.NewReader(yaml), fakeEnv)
}

// envoy.classify_error_bodies decides whether the filters let envoy-keypool read a
// failure's error body; every filter sends the request's start time.
func TestErrorBodiesAndRequestTime(t *testing.T) {
	for _, tt := range []struct {
		envoy string
		allow bool
	}{{"", true}, {"envoy: {classify_error_bodies: true}\n", true}, {"envoy: {classify_error_bodies: false}\n", false}} {
		bs := generate(t, tt.envoy+pools(pool("p", "openai", 1, "")))
		ep := extProcOf(t, clusterIn(t, bs.GetStaticResources().GetClusters(), "p"))
		if ep.GetAllowModeOverride() != tt.allow || (len(ep.GetAllowedOverrideModes()) == 1) != tt.allow {
			t.Errorf("%q: allow_mode_override %v, modes %v", tt.envoy, ep.GetAllowModeOverride(), ep.GetAllowedOverrideModes())
		}
		if !cmp.Equal(ep.GetRequestAttributes(), []string{"request.time"}) {
			t.Errorf("request_attributes %v", ep.GetRequestAttributes())
		}
	}
}
