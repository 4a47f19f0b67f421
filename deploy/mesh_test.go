package deploy

import (
	"os"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

const keyHTTPOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// examplePool is the pool every mesh and gateway example wires: the kustomize
// base's "openai" pool. The examples are checked against the configuration users
// deploy with them.
func examplePool(t *testing.T) *config.Config {
	t.Helper()
	f, err := os.Open("kubernetes/base/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := config.ReadWithoutSecrets(f)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Pools = slices.DeleteFunc(cfg.Pools, func(p config.Pool) bool { return p.Name != "openai" })
	if len(cfg.Pools) != 1 {
		t.Fatal("the base configuration has no openai pool")
	}
	return cfg
}

func httpOptions(t *testing.T, c *clusterv3.Cluster) *httpv3.HttpProtocolOptions {
	t.Helper()
	a, ok := c.GetTypedExtensionProtocolOptions()[keyHTTPOptions]
	if !ok {
		t.Fatalf("cluster %s has no %s", c.GetName(), keyHTTPOptions)
	}
	opts := &httpv3.HttpProtocolOptions{}
	if err := a.UnmarshalTo(opts); err != nil {
		t.Fatal(err)
	}
	return opts
}

// checkSamePieces: the example's provider cluster carries exactly what the generator
// writes for the pool (its upstream filters, retry policy and connection settings;
// the protocol choice may stay the gateway's), and its envoy_keypool cluster is the
// generated one, so that a change to the generator that the examples miss fails.
func checkSamePieces(t *testing.T, cfg *config.Config, bs *bootstrapv3.Bootstrap, c *clusterv3.Cluster) {
	t.Helper()
	gen, err := envoy.Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := httpOptions(t, clusterNamed(t, gen, cfg.Pools[0].Name))
	got := httpOptions(t, c)
	ignoreProtocol := protocmp.IgnoreOneofs(&httpv3.HttpProtocolOptions{}, "upstream_protocol_options")
	if d := cmp.Diff(want, got, protocmp.Transform(), ignoreProtocol); d != "" {
		t.Errorf("cluster %s: the HttpProtocolOptions differ from the generated ones (-generated +example):\n%s", c.GetName(), d)
	}
	if d := cmp.Diff(clusterNamed(t, gen, envoy.KeypoolCluster), clusterNamed(t, bs, envoy.KeypoolCluster), protocmp.Transform()); d != "" {
		t.Errorf("the envoy_keypool cluster differs from the generated one (-generated +example):\n%s", d)
	}
}

// checkModel runs package envoy's checks on the configuration a mesh or gateway
// generates with an example applied: the protos' validation rules, what Envoy
// refuses at load time, and CheckKeypool. allowed lists CheckKeypool findings the
// example answers otherwise (each with the reason), by a word of the finding.
func checkModel(t *testing.T, bs *bootstrapv3.Bootstrap, cfg *config.Config, allowed map[string]string) {
	t.Helper()
	if err := envoy.ValidateDeep(bs); err != nil {
		t.Errorf("proto validation: %v", err)
	}
	if err := envoy.CheckLoad(bs); err != nil {
		t.Errorf("Envoy would refuse the configuration: %v", err)
	}
	err := envoy.CheckKeypool(bs, cfg)
	if err == nil {
		return
	}
	for _, finding := range strings.Split(err.Error(), "\n") {
		if !slices.ContainsFunc(mapKeys(allowed), func(word string) bool { return strings.Contains(finding, word) }) {
			t.Errorf("CheckKeypool: %s", finding)
		}
	}
}

func mapKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// hcmListener is an HTTP listener whose connection manager holds rc inline, as a
// mesh's RDS would serve it.
func hcmListener(t *testing.T, name string, port uint32, hcm *hcmv3.HttpConnectionManager, rc *routev3.RouteConfiguration) *listenerv3.Listener {
	t.Helper()
	hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc}
	hcm.HttpFilters = []*hcmv3.HttpFilter{{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})},
	}}
	return &listenerv3.Listener{
		Name: name,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)},
		}}}},
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func clusterNamed(t *testing.T, bs *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

// requestIDFromEnvoy reports whether a virtual host replaces every request's
// x-request-id with a fresh UUID of Envoy's before the first attempt.
func requestIDFromEnvoy(vh *routev3.VirtualHost) bool {
	for _, h := range vh.GetRequestHeadersToAdd() {
		if strings.EqualFold(h.GetHeader().GetKey(), "x-request-id") && h.GetHeader().GetValue() == "%UNIQUE_ID%" &&
			h.GetAppendAction() == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			return true
		}
	}
	return false
}
