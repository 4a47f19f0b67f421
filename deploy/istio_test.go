package deploy

import (
	"fmt"
	"math"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	istionet "istio.io/api/networking/v1alpha3"
)

const istioDir = "examples/istio"

func istioObjects(t *testing.T) []object {
	t.Helper()
	var objs []object
	for _, f := range []string{"serviceentry.yaml", "destinationrule.yaml", "envoyfilter.yaml"} {
		o, err := decodeAll([]byte(readFile(t, istioDir+"/"+f)))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		objs = append(objs, o...)
	}
	return objs
}

func istioSpec[T proto.Message](t *testing.T, objs []object, kind string) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if io, ok := o.Value.(*istioObject); ok && o.Kind == kind {
			found = append(found, io.Spec.(T))
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s in the Istio example, want 1", len(found), kind)
	}
	return found[0]
}

// TestIstioExample puts the EnvoyFilter's patches on a model of what istiod gives a
// sidecar for the ServiceEntry and DestinationRule, and checks the result as package
// envoy checks a generated configuration.
func TestIstioExample(t *testing.T) {
	objs := istioObjects(t)
	se := istioSpec[*istionet.ServiceEntry](t, objs, "ServiceEntry")
	dr := istioSpec[*istionet.DestinationRule](t, objs, "DestinationRule")
	ef := istioSpec[*istionet.EnvoyFilter](t, objs, "EnvoyFilter")
	cfg := examplePool(t)

	bs := istioSidecarModel(t, se, dr)
	applyEnvoyFilter(t, bs, ef)
	provider := clusterNamed(t, bs, "outbound|80||api.openai.com")

	t.Run("the provider cluster carries the generated pieces", func(t *testing.T) {
		checkSamePieces(t, cfg, bs, provider)
	})
	t.Run("the sidecar configuration passes envoy's checks", func(t *testing.T) {
		checkModel(t, bs, cfg, map[string]string{
			// A sidecar's outbound connection manager keeps the application's
			// x-request-id; the virtual host replaces it (checked below).
			"use_remote_address": "the virtual host sets x-request-id from %UNIQUE_ID%",
		})
	})
	t.Run("Envoy, not the application, chooses the request id", func(t *testing.T) {
		vh := bs.GetStaticResources().GetListeners()[0]
		if !requestIDFromEnvoy(sidecarVirtualHost(t, vh)) {
			t.Error("the virtual host keeps the application's x-request-id: concurrent calls that propagate one id would share their tried keys")
		}
	})
	t.Run("the patches match what istiod generates", func(t *testing.T) {
		// Each CLUSTER MERGE and VIRTUAL_HOST patch found its target above (the
		// model fails otherwise); the ServiceEntry port is the one the patch names.
		if se.GetPorts()[0].GetNumber() != 80 || se.GetPorts()[0].GetProtocol() != "HTTP" {
			t.Error("the ServiceEntry port must be plain HTTP 80: the sidecar only runs HTTP filters on HTTP ports")
		}
	})
}

// istioSidecarModel is the part of a sidecar's configuration istiod generates for an
// HTTP ServiceEntry port with TLS origination (pilot/pkg/networking/core: cluster
// "outbound|PORT||HOST", DNS resolution, the DestinationRule's connection pool as
// circuit breakers, Istio's unlimited defaults otherwise; the outbound listener
// 0.0.0.0_PORT with use_remote_address false and the route configuration "PORT",
// virtual host "HOST:PORT").
func istioSidecarModel(t *testing.T, se *istionet.ServiceEntry, dr *istionet.DestinationRule) *bootstrapv3.Bootstrap {
	t.Helper()
	host, port := se.GetHosts()[0], se.GetPorts()[0]
	name := fmt.Sprintf("outbound|%d||%s", port.GetNumber(), host)
	limit := func(v int32) *wrapperspb.UInt32Value {
		if v == 0 {
			return wrapperspb.UInt32(math.MaxUint32)
		}
		return wrapperspb.UInt32(uint32(v))
	}
	pool := dr.GetTrafficPolicy().GetConnectionPool().GetHttp()
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(10e9),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port.GetTargetPort()},
				}}},
			}}}},
		}}},
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections:     wrapperspb.UInt32(math.MaxUint32),
			MaxPendingRequests: limit(pool.GetHttp1MaxPendingRequests()),
			MaxRequests:        limit(pool.GetHttp2MaxRequests()),
			MaxRetries:         limit(pool.GetMaxRetries()),
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{keyHTTPOptions: mustAny(t, &httpv3.HttpProtocolOptions{
			CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(3600e9)},
			UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
			}},
		})},
	}
	for _, pl := range dr.GetTrafficPolicy().GetPortLevelSettings() {
		tls := pl.GetTls()
		if pl.GetPort().GetNumber() != port.GetNumber() || tls.GetMode() != istionet.ClientTLSSettings_SIMPLE {
			continue
		}
		var sans []*tlsv3.SubjectAltNameMatcher
		for _, s := range tls.GetSubjectAltNames() {
			sans = append(sans, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}})
		}
		c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{
			TypedConfig: mustAny(t, &tlsv3.UpstreamTlsContext{Sni: tls.GetSni(), CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa:                 &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/ssl/certs/ca-certificates.crt"}},
					MatchTypedSubjectAltNames: sans,
				}},
			}}),
		}}
	}
	if c.TransportSocket == nil {
		t.Fatal("the DestinationRule originates no TLS for the ServiceEntry port: keys would go to the provider in clear text")
	}
	rc := &routev3.RouteConfiguration{
		Name: fmt.Sprint(port.GetNumber()),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    fmt.Sprintf("%s:%d", host, port.GetNumber()),
			Domains: []string{host, fmt.Sprintf("%s:%d", host, port.GetNumber())},
			Routes: []*routev3.Route{{
				Name:  "default",
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
					Timeout:          durationpb.New(0), // Istio disables the route timeout by default
				}},
			}},
		}},
	}
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: name, UseRemoteAddress: wrapperspb.Bool(false)}
	return &bootstrapv3.Bootstrap{StaticResources: &bootstrapv3.Bootstrap_StaticResources{
		Listeners: []*listenerv3.Listener{hcmListener(t, fmt.Sprintf("0.0.0.0_%d", port.GetNumber()), port.GetNumber(), hcm, rc)},
		Clusters:  []*clusterv3.Cluster{c},
	}}
}

// applyEnvoyFilter applies the patches as istiod does (pilot/pkg/networking/core/
// envoyfilter): ADD appends a resource; MERGE is proto.Merge into the matched one,
// which replaces a typed_extension_protocol_options entry whole. A patch kind the
// model does not know fails the test, so that a new patch is modelled before it ships.
func applyEnvoyFilter(t *testing.T, bs *bootstrapv3.Bootstrap, ef *istionet.EnvoyFilter) {
	t.Helper()
	sr := bs.GetStaticResources()
	for i, cp := range ef.GetConfigPatches() {
		where := fmt.Sprintf("configPatches[%d] %s %s", i, cp.GetApplyTo(), cp.GetPatch().GetOperation())
		if ctx := cp.GetMatch().GetContext(); ctx != istionet.EnvoyFilter_SIDECAR_OUTBOUND {
			t.Fatalf("%s: context %s; the example patches sidecars' outbound traffic", where, ctx)
		}
		value, err := protojson.Marshal(cp.GetPatch().GetValue())
		if err != nil {
			t.Fatal(err)
		}
		switch cp.GetApplyTo() {
		case istionet.EnvoyFilter_CLUSTER:
			c := &clusterv3.Cluster{}
			if err := protojson.Unmarshal(value, c); err != nil {
				t.Fatalf("%s: value is no Cluster: %v", where, err)
			}
			switch cp.GetPatch().GetOperation() {
			case istionet.EnvoyFilter_Patch_ADD:
				sr.Clusters = append(sr.Clusters, c)
			case istionet.EnvoyFilter_Patch_MERGE:
				m := cp.GetMatch().GetCluster()
				name := fmt.Sprintf("outbound|%d||%s", m.GetPortNumber(), m.GetService())
				proto.Merge(clusterNamed(t, bs, name), c)
			default:
				t.Fatalf("%s: not modelled", where)
			}
		case istionet.EnvoyFilter_VIRTUAL_HOST:
			vh := &routev3.VirtualHost{}
			if err := protojson.Unmarshal(value, vh); err != nil {
				t.Fatalf("%s: value is no VirtualHost: %v", where, err)
			}
			if cp.GetPatch().GetOperation() != istionet.EnvoyFilter_Patch_MERGE {
				t.Fatalf("%s: not modelled", where)
			}
			target := cp.GetMatch().GetRouteConfiguration().GetVhost().GetName()
			found := false
			for _, l := range sr.GetListeners() {
				for _, v := range virtualHosts(t, l) {
					if v.vh.GetName() == target {
						proto.Merge(v.vh, vh)
						v.save()
						found = true
					}
				}
			}
			if !found {
				t.Fatalf("%s: no virtual host %q", where, target)
			}
		default:
			t.Fatalf("%s: not modelled", where)
		}
	}
}

// vhostRef is a virtual host inside a listener's typed config; save writes a change
// back into the listener.
type vhostRef struct {
	vh   *routev3.VirtualHost
	save func()
}

func virtualHosts(t *testing.T, l *listenerv3.Listener) []vhostRef {
	t.Helper()
	var out []vhostRef
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			hcm := &hcmv3.HttpConnectionManager{}
			if !strings.HasSuffix(f.GetTypedConfig().GetTypeUrl(), "HttpConnectionManager") {
				continue
			}
			if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
				t.Fatal(err)
			}
			for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
				out = append(out, vhostRef{vh: vh, save: func() {
					f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}
				}})
			}
		}
	}
	return out
}

func sidecarVirtualHost(t *testing.T, l *listenerv3.Listener) *routev3.VirtualHost {
	t.Helper()
	vhs := virtualHosts(t, l)
	if len(vhs) != 1 {
		t.Fatalf("%d virtual hosts, want 1", len(vhs))
	}
	return vhs[0].vh
}
