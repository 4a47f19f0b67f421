package envoy

import (
	"fmt"
	"net"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// keypoolCluster is the envoy-keypool replicas: gRPC over HTTP/2 (over TCP, TLS or a
// Unix socket), health checked with the standard gRPC health service they serve on the
// ext_proc port.
func keypoolCluster(cfg *config.Config) (*clusterv3.Cluster, error) {
	addrs, discovery, err := keypoolEndpoints(cfg.Envoy.KeypoolAddresses)
	if err != nil {
		return nil, err
	}
	opts := &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
				// A replica that vanished without closing its connections (host down,
				// network cut) stops getting streams once a PING goes unanswered
				// (http2/codec_impl.cc sendKeepalive, onKeepaliveResponseTimeout).
				ConnectionKeepalive: &corev3.KeepaliveSettings{
					Interval: durationpb.New(keepaliveInterval),
					Timeout:  durationpb.New(keepaliveTimeout),
				},
			}},
		}},
	}
	// Every provider attempt in flight holds one ext_proc stream until the provider's
	// response headers (or its body, when envoy-keypool asks for it), and each may be
	// retried at once when a replica goes: as many as all provider clusters allow.
	// Past max_requests or max_pending_requests the stream fails and the attempt
	// answers 500; past max_retries a stream that could have moved to another replica
	// fails instead (retry_state_impl.cc shouldRetry).
	streams := 0
	for i := range cfg.Pools {
		streams += cfg.Pools[i].Route.EffectiveMaxConcurrentRequests()
	}
	streams = max(streams, envoyDefaultMaxRequests)
	n := wrapperspb.UInt32(uint32(streams))
	c := &clusterv3.Cluster{
		Name:                 KeypoolCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: discovery},
		ConnectTimeout:       durationpb.New(keypoolConnectTimeout),
		LoadAssignment:       loadAssignment(KeypoolCluster, addrs),
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxRequests:        n,
			MaxPendingRequests: n,
			MaxRetries:         n,
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{keyHTTPOptions: mustAny(opts)},
		HealthChecks: []*corev3.HealthCheck{{
			Timeout:            durationpb.New(healthTimeout),
			Interval:           durationpb.New(healthInterval),
			NoTrafficInterval:  durationpb.New(healthInterval),
			UnhealthyThreshold: wrapperspb.UInt32(healthUnhealthyThreshold),
			HealthyThreshold:   wrapperspb.UInt32(healthHealthyThreshold),
			// service_name "": the server's overall health (grpc.health.v1), which
			// envoy-keypool turns NOT_SERVING when it starts draining.
			HealthChecker: &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{}},
		}},
	}
	if discovery == clusterv3.Cluster_STRICT_DNS {
		c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
	}
	if t := cfg.Envoy.KeypoolTLS; t != nil {
		c.TransportSocket = &corev3.TransportSocket{
			Name:       nameTLS,
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(keypoolTLS(t))},
		}
	}
	return c, nil
}

// keypoolEndpoints turns envoy.keypool_addresses into endpoint addresses and the
// cluster type that resolves them: STRICT_DNS for host:port (every address a name
// resolves to is a replica of its own, each health checked), STATIC for Unix sockets
// (Envoy's pipe address, which DNS clusters cannot hold).
func keypoolEndpoints(list []string) ([]*corev3.Address, clusterv3.Cluster_DiscoveryType, error) {
	var addrs []*corev3.Address
	pipes := 0
	for i, a := range list {
		if path, ok := config.KeypoolSocketPath(a); ok {
			pipes++
			addrs = append(addrs, &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: path}}})
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return nil, 0, fmt.Errorf("envoy.keypool_addresses[%d]: %w", i, err)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return nil, 0, fmt.Errorf("envoy.keypool_addresses[%d]: port %q: %w", i, port, err)
		}
		addrs = append(addrs, socketAddr(host, port))
	}
	switch {
	case pipes == 0:
		return addrs, clusterv3.Cluster_STRICT_DNS, nil
	case pipes == len(list):
		return addrs, clusterv3.Cluster_STATIC, nil
	default:
		return nil, 0, fmt.Errorf("envoy.keypool_addresses: mixes unix: sockets and host:port addresses")
	}
}

// keypoolTLS is Envoy's side of TLS to envoy-keypool: the replica's certificate checked
// against the CA and the one server name, Envoy's client certificate for mutual TLS,
// and ALPN h2, without which gRPC servers (grpc-go since 1.67) refuse the handshake.
func keypoolTLS(t *config.KeypoolTLS) *tlsv3.UpstreamTlsContext {
	common := &tlsv3.CommonTlsContext{
		AlpnProtocols: []string{"h2"},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa:                 &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.CAFile}},
			MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{dnsSAN(t.ServerName)},
		}},
	}
	if t.CertFile != "" {
		common.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.CertFile}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.KeyFile}},
		}}
	}
	return &tlsv3.UpstreamTlsContext{Sni: t.ServerName, CommonTlsContext: common}
}

func socketAddr(host, port string) *corev3.Address {
	n, _ := strconv.ParseUint(port, 10, 16) // checked by the callers
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(n)},
	}}}
}

func loadAssignment(cluster string, addrs []*corev3.Address) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, a := range addrs {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: a}}})
	}
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: cluster,
		Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
	}
}
