package deploy

import (
	"fmt"
	"testing"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	jsonpatch "github.com/evanphx/json-patch/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/envoy-keypool/envoy-keypool/envoy"
)

const (
	typeCluster     = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeRouteConfig = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

func gatewayObjects(t *testing.T, dir string, files ...string) []object {
	t.Helper()
	var objs []object
	for _, f := range files {
		o, err := decodeAll([]byte(readFile(t, dir+"/"+f)))
		if err != nil {
			t.Fatalf("%s/%s: %v", dir, f, err)
		}
		objs = append(objs, o...)
	}
	return objs
}

func TestEnvoyGatewayExample(t *testing.T) {
	objs := gatewayObjects(t, "examples/envoy-gateway", "backend.yaml", "httproute.yaml", "trafficpolicy.yaml", "envoypatchpolicy.yaml")
	route := one[*gwapiv1.HTTPRoute](t, objs, "HTTPRoute", "openai")
	backend := one[*egv1a1.Backend](t, objs, "Backend", "openai")
	tlsPolicy := one[*gwapiv1.BackendTLSPolicy](t, objs, "BackendTLSPolicy", "openai")
	btp := one[*egv1a1.BackendTrafficPolicy](t, objs, "BackendTrafficPolicy", "openai")
	epp := one[*egv1a1.EnvoyPatchPolicy](t, objs, "EnvoyPatchPolicy", "envoy-keypool-openai")
	cfg := examplePool(t)

	bs := envoyGatewayModel(t, "eg", route, backend, tlsPolicy, btp)
	applyEnvoyPatchPolicy(t, bs, epp)
	provider := clusterNamed(t, bs, "httproute/default/openai/rule/0")
	t.Run("the provider cluster carries the generated pieces", func(t *testing.T) {
		checkSamePieces(t, cfg, bs, provider)
	})
	t.Run("the gateway configuration passes envoy's checks", func(t *testing.T) {
		checkModel(t, bs, cfg, nil)
	})
	t.Run("the policy targets the route's Gateway", func(t *testing.T) {
		if string(epp.Spec.TargetRef.Name) != string(route.Spec.ParentRefs[0].Name) || epp.Spec.TargetRef.Kind != "Gateway" {
			t.Errorf("EnvoyPatchPolicy targets %s %s, the HTTPRoute's parent is %s", epp.Spec.TargetRef.Kind, epp.Spec.TargetRef.Name, route.Spec.ParentRefs[0].Name)
		}
	})
}

func TestAIGatewayExample(t *testing.T) {
	objs := gatewayObjects(t, "examples/ai-gateway", "aigatewayroute.yaml", "envoypatchpolicy.yaml")
	aigw := one[*aiGatewayRoute](t, objs, "AIGatewayRoute", "openai")
	backend := one[*egv1a1.Backend](t, objs, "Backend", "openai")
	tlsPolicy := one[*gwapiv1.BackendTLSPolicy](t, objs, "BackendTLSPolicy", "openai")
	btp := one[*egv1a1.BackendTrafficPolicy](t, objs, "BackendTrafficPolicy", "openai")
	epp := one[*egv1a1.EnvoyPatchPolicy](t, objs, "EnvoyPatchPolicy", "envoy-keypool-openai")
	svc := one[*aiServiceBackend](t, objs, "AIServiceBackend", "openai")
	cfg := examplePool(t)

	// AI Gateway's controller turns the AIGatewayRoute into an HTTPRoute of the same
	// name, whose backends are the AIServiceBackends' Backends.
	route := &gwapiv1.HTTPRoute{}
	route.Name, route.Namespace = aigw.Name, aigw.Namespace
	route.Spec.ParentRefs = aigw.Spec.ParentRefs
	route.Spec.Rules = []gwapiv1.HTTPRouteRule{{
		Matches: []gwapiv1.HTTPRouteMatch{{Path: &gwapiv1.HTTPPathMatch{Value: ptr("/")}}},
	}}
	if svc.Spec.BackendRef.Name != gwapiv1.ObjectName(backend.Name) {
		t.Fatalf("AIServiceBackend points at Backend %s, the example defines %s", svc.Spec.BackendRef.Name, backend.Name)
	}
	bs := envoyGatewayModel(t, string(aigw.Spec.ParentRefs[0].Name), route, backend, tlsPolicy, btp)
	applyEnvoyPatchPolicy(t, bs, epp)
	provider := clusterNamed(t, bs, "httproute/default/openai/rule/0")

	t.Run("the provider cluster carries the generated pieces", func(t *testing.T) {
		checkSamePieces(t, cfg, bs, provider)
	})
	t.Run("the gateway configuration passes envoy's checks before AI Gateway's hook", func(t *testing.T) {
		checkModel(t, bs, cfg, nil)
	})
	t.Run("after AI Gateway's hook envoy-keypool runs first and the chain still loads", func(t *testing.T) {
		insertAIGatewayUpstreamFilter(t, bs, provider)
		if err := envoy.CheckLoad(bs); err != nil {
			t.Fatalf("Envoy would refuse the chain: %v", err)
		}
		names := []string{}
		for _, f := range httpOptions(t, provider).GetHttpFilters() {
			names = append(names, f.GetName())
		}
		keypoolFilter := httpOptions(t, provider).GetHttpFilters()[0].GetName()
		want := []string{keypoolFilter, "envoy.filters.http.ext_proc/aigateway", "envoy.filters.http.header_mutation", "envoy.filters.http.upstream_codec"}
		if fmt.Sprint(names) != fmt.Sprint(want) {
			t.Errorf("upstream filters %v, want %v: envoy-keypool must inject the key before AI Gateway's filter runs and read the status after it", names, want)
		}
	})
	t.Run("the backend holds no key of its own", func(t *testing.T) {
		for _, o := range objs {
			if o.Kind == "BackendSecurityPolicy" {
				t.Error("a BackendSecurityPolicy would make AI Gateway overwrite envoy-keypool's key with its own")
			}
		}
	})
}

// envoyGatewayModel is what Envoy Gateway generates for a Gateway listener "http"
// and an HTTPRoute with one rule to a TLS Backend (internal/xds/translator): listener
// and route configuration "NS/GATEWAY/http", use_remote_address true and a generated
// x-request-id by default, the rule's cluster "httproute/NS/ROUTE/rule/0" with the
// BackendTrafficPolicy's circuit breaker, and HttpProtocolOptions (auto_config) since
// the backend has a transport socket (cluster.go, buildTypedExtensionProtocolOptions).
func envoyGatewayModel(t *testing.T, gateway string, route *gwapiv1.HTTPRoute, backend *egv1a1.Backend,
	tlsPolicy *gwapiv1.BackendTLSPolicy, btp *egv1a1.BackendTrafficPolicy) *bootstrapv3.Bootstrap {
	t.Helper()
	ns := route.Namespace
	name := fmt.Sprintf("httproute/%s/%s/rule/0", ns, route.Name)
	fqdn := backend.Spec.Endpoints[0].FQDN
	thresholds := &clusterv3.CircuitBreakers_Thresholds{}
	if cb := btp.Spec.CircuitBreaker; cb != nil {
		if cb.MaxParallelRequests != nil {
			thresholds.MaxRequests = wrapperspb.UInt32(uint32(*cb.MaxParallelRequests))
		}
		if cb.MaxParallelRetries != nil {
			thresholds.MaxRetries = wrapperspb.UInt32(uint32(*cb.MaxParallelRetries))
		}
	}
	host := string(tlsPolicy.Spec.Validation.Hostname)
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(10e9),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: fqdn.Hostname, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(fqdn.Port)},
				}}},
			}}}},
		}}},
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{thresholds}},
		TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{
			TypedConfig: mustAny(t, &tlsv3.UpstreamTlsContext{Sni: host, CommonTlsContext: &tlsv3.CommonTlsContext{
				AlpnProtocols: []string{"h2", "http/1.1"},
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/ssl/certs/ca-certificates.crt"}},
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_DNS,
						Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: host}}}},
				}},
			}}),
		}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{keyHTTPOptions: mustAny(t, &httpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_AutoConfig{AutoConfig: &httpv3.HttpProtocolOptions_AutoHttpConfig{
				HttpProtocolOptions: &corev3.Http1ProtocolOptions{},
			}},
		})},
	}
	var routes []*routev3.Route
	for i, rule := range route.Spec.Rules {
		action := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}
		if rule.Timeouts != nil && rule.Timeouts.Request != nil {
			d, err := parseGatewayDuration(string(*rule.Timeouts.Request))
			if err != nil {
				t.Fatal(err)
			}
			action.Timeout = durationpb.New(d)
		}
		for _, f := range rule.Filters {
			if f.URLRewrite != nil {
				if f.URLRewrite.Hostname != nil {
					action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: string(*f.URLRewrite.Hostname)}
				}
				if p := f.URLRewrite.Path; p != nil && p.ReplacePrefixMatch != nil {
					action.PrefixRewrite = *p.ReplacePrefixMatch
				}
			}
		}
		prefix := "/"
		if len(rule.Matches) > 0 && rule.Matches[0].Path != nil && rule.Matches[0].Path.Value != nil {
			prefix = *rule.Matches[0].Path.Value
		}
		routes = append(routes, &routev3.Route{
			Name:   fmt.Sprintf("%s/match/%d/*", name, i),
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
			Action: &routev3.Route_Route{Route: action},
		})
	}
	listener := fmt.Sprintf("%s/%s/http", ns, gateway)
	rc := &routev3.RouteConfiguration{
		Name: listener,
		VirtualHosts: []*routev3.VirtualHost{{
			Name: listener + "/*", Domains: []string{"*"}, Routes: routes,
		}},
	}
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "http-10080", UseRemoteAddress: wrapperspb.Bool(true)}
	return &bootstrapv3.Bootstrap{StaticResources: &bootstrapv3.Bootstrap_StaticResources{
		Listeners: []*listenerv3.Listener{hcmListener(t, listener, 10080, hcm, rc)},
		Clusters:  []*clusterv3.Cluster{c},
	}}
}

// applyEnvoyPatchPolicy applies the JSON patches as Envoy Gateway does
// (internal/xds/translator/jsonpatch.go): the resource as protojson with proto
// field names, RFC 6902 patches with intermediate objects created on add, protojson
// back (unknown fields refused) and validation; an add without a path adds a whole
// resource.
func applyEnvoyPatchPolicy(t *testing.T, bs *bootstrapv3.Bootstrap, epp *egv1a1.EnvoyPatchPolicy) {
	t.Helper()
	if epp.Spec.Type != egv1a1.JSONPatchEnvoyPatchType {
		t.Fatalf("EnvoyPatchPolicy type %s", epp.Spec.Type)
	}
	sr := bs.GetStaticResources()
	opts := jsonpatch.NewApplyOptions()
	opts.EnsurePathExistsOnAdd = true
	for i, p := range epp.Spec.JSONPatches {
		where := fmt.Sprintf("jsonPatches[%d] %s %q", i, p.Type, p.Name)
		op := p.Operation
		if op.JSONPath != nil {
			t.Fatalf("%s: jsonPath is not modelled", where)
		}
		if op.Op == "add" && (op.Path == nil || *op.Path == "") {
			if p.Type != typeCluster {
				t.Fatalf("%s: adding a %s is not modelled", where, p.Type)
			}
			c := &clusterv3.Cluster{}
			if err := protojson.Unmarshal(op.Value.Raw, c); err != nil {
				t.Fatalf("%s: value is no Cluster: %v", where, err)
			}
			if c.GetName() != p.Name {
				t.Errorf("%s: the added cluster is named %q", where, c.GetName())
			}
			sr.Clusters = append(sr.Clusters, c)
			continue
		}
		var target proto.Message
		var save func()
		switch p.Type {
		case typeCluster:
			target = clusterNamed(t, bs, p.Name)
			save = func() {}
		case typeRouteConfig:
			for _, l := range sr.GetListeners() {
				for _, fc := range l.GetFilterChains() {
					for _, f := range fc.GetFilters() {
						hcm := &hcmv3.HttpConnectionManager{}
						if f.GetTypedConfig().UnmarshalTo(hcm) == nil && hcm.GetRouteConfig().GetName() == p.Name {
							target = hcm.GetRouteConfig()
							save = func() { f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)} }
						}
					}
				}
			}
		default:
			t.Fatalf("%s: patching a %s is not modelled", where, p.Type)
		}
		if target == nil {
			t.Fatalf("%s: Envoy Gateway generates no such resource (the policy would report ResourceNotFound)", where)
		}
		doc, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(target)
		if err != nil {
			t.Fatal(err)
		}
		raw := fmt.Sprintf(`[{"op":%q,"path":%q`, op.Op, ptrValue(op.Path, ""))
		if op.Value != nil {
			raw += `,"value":` + string(op.Value.Raw)
		}
		patch, err := jsonpatch.DecodePatch([]byte(raw + "}]"))
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		doc, err = patch.ApplyWithOptions(doc, opts)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		fresh := target.ProtoReflect().New().Interface()
		if err := protojson.Unmarshal(doc, fresh); err != nil {
			t.Fatalf("%s: the patched resource does not decode: %v", where, err)
		}
		proto.Reset(target)
		proto.Merge(target, fresh)
		save()
	}
}

// insertAIGatewayUpstreamFilter does what AI Gateway's extension server does to the
// cluster of an AIGatewayRoute rule after Envoy Gateway's patches
// (internal/extensionserver/post_translate_modify.go, maybeModifyCluster): its
// ext_proc filter (request headers only) and a header_mutation filter, inserted just
// before the last filter when the chain has one.
func insertAIGatewayUpstreamFilter(t *testing.T, bs *bootstrapv3.Bootstrap, c *clusterv3.Cluster) {
	t.Helper()
	opts := httpOptions(t, c)
	aigw := &hcmv3.HttpFilter{Name: "envoy.filters.http.ext_proc/aigateway", ConfigType: &hcmv3.HttpFilter_TypedConfig{
		TypedConfig: mustAny(t, &extprocv3.ExternalProcessor{
			GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "ai-gateway-extproc-uds"}}},
			ProcessingMode: &extprocv3.ProcessingMode{
				RequestHeaderMode:  extprocv3.ProcessingMode_SEND,
				ResponseHeaderMode: extprocv3.ProcessingMode_SKIP,
			},
		}),
	}}
	hm := &hcmv3.HttpFilter{Name: "envoy.filters.http.header_mutation", ConfigType: &hcmv3.HttpFilter_TypedConfig{
		TypedConfig: mustAny(t, &headermutationv3.HeaderMutation{}),
	}}
	fs := opts.GetHttpFilters()
	if len(fs) == 0 {
		t.Fatal("no upstream filters: AI Gateway would add its own chain without envoy-keypool")
	}
	last := fs[len(fs)-1]
	opts.HttpFilters = append(append(fs[:len(fs)-1:len(fs)-1], aigw, hm), last)
	c.TypedExtensionProtocolOptions[keyHTTPOptions] = mustAny(t, opts)
	// The cluster of AI Gateway's own ext_proc server, which it adds too: a Unix
	// socket, over HTTP/2.
	bs.StaticResources.Clusters = append(bs.StaticResources.Clusters, &clusterv3.Cluster{
		Name:                 "ai-gateway-extproc-uds",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(10e9),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "ai-gateway-extproc-uds", Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/etc/ai-gateway-extproc/run.sock"}}},
			}}}},
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{keyHTTPOptions: mustAny(t, &httpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
			}},
		})},
	})
}

func ptr[T any](v T) *T { return &v }

// parseGatewayDuration reads a Gateway API duration (GEP-2257: "600s", "1h30m"),
// a subset of Go's.
func parseGatewayDuration(s string) (time.Duration, error) { return time.ParseDuration(s) }
