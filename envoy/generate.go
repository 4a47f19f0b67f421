package envoy

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// KeypoolCluster is the name of the cluster of envoy-keypool replicas in the generated
// configuration. A pool may not take this name: each pool's cluster is named after it.
const KeypoolCluster = "envoy_keypool"

// Names of the extensions the generated configuration uses, as Envoy registers them.
const (
	nameHCM           = "envoy.filters.network.http_connection_manager"
	nameRouter        = "envoy.filters.http.router"
	nameExtProc       = "envoy.filters.http.ext_proc"
	nameUpstreamCodec = "envoy.filters.http.upstream_codec"
	nameTLS           = "envoy.transport_sockets.tls"
	// keyHTTPOptions is the typed_extension_protocol_options key of HttpProtocolOptions.
	keyHTTPOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// Numbers of the generated configuration. Each is explained in doc.go.
const (
	// messageTimeout is the ext_proc message_timeout: how long Envoy waits for
	// envoy-keypool's answer to one message before failing the attempt with 504. It is
	// Envoy's default, written out because config.State's Redis timeout is bounded by it.
	messageTimeout = 200 * time.Millisecond
	// retryBaseInterval and retryMaxInterval are the fully jittered back-off between
	// attempts (RetryPolicy.retry_back_off). The next attempt uses another key, so
	// waiting buys nothing; the back-off only spreads a 429 storm's retries.
	retryBaseInterval = 10 * time.Millisecond
	retryMaxInterval  = 100 * time.Millisecond
	// envoyDefaultMaxRequests is Envoy's default circuit breaker max_requests
	// (circuit_breaker.proto). The generated configuration keeps it for provider
	// clusters and derives the other limits from it.
	envoyDefaultMaxRequests = 1024
	// providerConnectTimeout is Cluster.connect_timeout for the providers (Envoy's
	// default, written out).
	providerConnectTimeout = 5 * time.Second
	// keypoolConnectTimeout is Cluster.connect_timeout for envoy-keypool, which runs
	// next to Envoy: a replica that does not accept within a second is as good as down.
	keypoolConnectTimeout = time.Second
	// Active gRPC health checks of the envoy-keypool replicas. no_traffic_interval
	// (default 60s) is lowered so that a replica that starts after Envoy is found
	// before the first requests arrive.
	healthTimeout            = time.Second
	healthInterval           = 5 * time.Second
	healthUnhealthyThreshold = 2
	healthHealthyThreshold   = 1
)

// Generate builds the Envoy bootstrap that runs envoy-keypool as cfg describes it: one
// listener, one route and one provider cluster per pool, each provider cluster with the
// envoy-keypool ext_proc filter and the key failover retry policy in its
// HttpProtocolOptions, and the envoy_keypool cluster of replicas. It reads no secret.
func Generate(cfg *config.Config) (*bootstrapv3.Bootstrap, error) {
	e := cfg.Envoy
	var errs []error
	// Envoy names these headers itself; envoy-keypool may be told other names when
	// another proxy sits in front of it, but this configuration cannot provide them.
	if e.AttemptCountHeader != "x-envoy-attempt-count" {
		errs = append(errs, fmt.Errorf("envoy.attempt_count_header %q: Envoy's include_request_attempt_count only sends x-envoy-attempt-count", e.AttemptCountHeader))
	}
	if e.RequestIDHeader != "x-request-id" {
		errs = append(errs, fmt.Errorf("envoy.request_id_header %q: Envoy's connection manager only generates x-request-id", e.RequestIDHeader))
	}
	listen, err := socketAddress(e.Listen)
	if err != nil {
		errs = append(errs, fmt.Errorf("envoy.listen: %w", err))
	}
	admin, err := socketAddress(e.AdminAddress)
	if err != nil {
		errs = append(errs, fmt.Errorf("envoy.admin_address: %w", err))
	}
	keypool, err := keypoolCluster(cfg)
	if err != nil {
		errs = append(errs, err)
	}

	clusters := []*clusterv3.Cluster{}
	var routes []*routev3.Route
	prefixes := map[string]string{}
	for i := range cfg.Pools {
		p := &cfg.Pools[i]
		if p.Name == KeypoolCluster {
			errs = append(errs, fmt.Errorf("pools[%d].name %q is the name of the envoy-keypool cluster", i, p.Name))
			continue
		}
		if other, dup := prefixes[p.Route.Prefix]; dup {
			errs = append(errs, fmt.Errorf("pools[%d].route.prefix %q is also pool %q's: one of them would never be reached", i, p.Route.Prefix, other))
			continue
		}
		prefixes[p.Route.Prefix] = p.Name
		c, host, err := providerCluster(cfg, p)
		if err != nil {
			errs = append(errs, fmt.Errorf("pools[%d].route.upstream: %w", i, err))
			continue
		}
		clusters = append(clusters, c)
		routes = append(routes, poolRoute(cfg, p, host))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// Envoy takes the first route that matches: the longest prefix goes first, so that
	// "/openai/" never shadows "/openai/eu/" whatever the order of the pools.
	slices.SortStableFunc(routes, func(a, b *routev3.Route) int {
		return cmp.Compare(len(b.GetMatch().GetPrefix()), len(a.GetMatch().GetPrefix()))
	})
	clusters = append(clusters, keypool)

	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "llm",
		// Envoy is the edge: with use_remote_address every client is external (no
		// address is trusted by default since Envoy 1.33), so the connection manager
		// replaces any client x-request-id with a fresh one (envoy-keypool keys a
		// request's tried keys by it; a propagated id would share them between
		// requests) and drops x-envoy-retry-on, x-envoy-max-retries and
		// x-envoy-upstream-rq-timeout-ms, with which a client could change the failover.
		// See header_sanitizing in Envoy's HTTP connection manager docs.
		UseRemoteAddress: wrapperspb.Bool(true),
		// A non-streamed completion sends nothing until the model is done: Envoy's
		// default 5 min stream idle timeout would cut long generations.
		StreamIdleTimeout: durationpb.New(e.RouteTimeout.Std()),
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "llm",
			// The marker is for the router's retry decision only. It reaches the
			// client's side when retries run out or the retry circuit breaker
			// overflows; it is removed there.
			ResponseHeadersToRemove: []string{e.RetryMarkerHeader},
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    "llm",
				Domains: []string{"*"},
				// x-envoy-attempt-count on each attempt's request headers, which
				// upstream filters see (router.cc).
				IncludeRequestAttemptCount: true,
				Routes:                     routes,
			}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{httpFilter(nameRouter, &routerv3.Router{})},
	}
	return &bootstrapv3.Bootstrap{
		Admin: &bootstrapv3.Admin{Address: admin},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Listeners: []*listenerv3.Listener{{
				Name:    "llm",
				Address: listen,
				FilterChains: []*listenerv3.FilterChain{{
					Filters: []*listenerv3.Filter{{
						Name:       nameHCM,
						ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
					}},
				}},
			}},
			Clusters: clusters,
		},
	}, nil
}

// poolRoute sends the pool's prefix to its cluster, rewritten to "/" on the provider's
// host: /openai/v1/chat/completions reaches https://api.openai.com/v1/chat/completions.
func poolRoute(cfg *config.Config, p *config.Pool, host string) *routev3.Route {
	return &routev3.Route{
		Name:  p.Name,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p.Route.Prefix}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier:     &routev3.RouteAction_Cluster{Cluster: p.Name},
			PrefixRewrite:        "/",
			HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: host},
			// The whole exchange, every attempt included (route_components.proto); no
			// per_try_timeout: a slow generation must not be cut and sent again.
			Timeout: durationpb.New(cfg.Envoy.RouteTimeout.Std()),
		}},
		// The body kept to replay the request on the next attempt (router.cc: a larger
		// body abandons the retry). Beyond per_connection_buffer_limit_bytes (1 MiB)
		// since Envoy 1.36 (route_components.proto).
		RequestBodyBufferLimit: wrapperspb.UInt64(uint64(cfg.Envoy.RequestBodyBufferLimit)),
	}
}

// providerCluster is the pool's provider with envoy-keypool in its upstream filters
// and the key failover retry policy. host is the Host header the provider expects.
func providerCluster(cfg *config.Config, p *config.Pool) (c *clusterv3.Cluster, host string, err error) {
	u, err := url.Parse(p.Route.Upstream)
	if err != nil {
		return nil, "", err
	}
	hostname, port := u.Hostname(), u.Port()
	if port == "" {
		port = map[string]string{"https": "443", "http": "80"}[u.Scheme]
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil || hostname == "" {
		return nil, "", fmt.Errorf("%q: want scheme://host[:port]", p.Route.Upstream)
	}
	opts := &httpv3.HttpProtocolOptions{
		// HTTP/1.1 to the provider: what the providers' SDKs speak, one request per
		// connection, nothing for ALPN to negotiate.
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
		}},
		// The cluster's chain wins over the router's upstream_http_filters and must
		// end with the upstream codec (upstream_request.cc).
		HttpFilters: []*hcmv3.HttpFilter{
			httpFilter(nameExtProc, extProcFilter(cfg, p)),
			httpFilter(nameUpstreamCodec, &upstreamcodecv3.UpstreamCodec{}),
		},
		RetryPolicy: retryPolicy(cfg, p),
	}
	c = &clusterv3.Cluster{
		Name: p.Name,
		// One logical host behind DNS, as Envoy recommends for large web services:
		// connections follow whatever address DNS returns now.
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS},
		ConnectTimeout:       durationpb.New(providerConnectTimeout),
		// Containers often resolve AAAA records without an IPv6 route.
		DnsLookupFamily: clusterv3.Cluster_V4_PREFERRED,
		LoadAssignment:  loadAssignment(p.Name, [][2]string{{hostname, port}}),
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority: corev3.RoutingPriority_DEFAULT,
			// Envoy allows 3 retries in flight per cluster by default and forwards
			// the failed response past it (upstream_rq_retry_overflow). When a key
			// hits its rate limit every request in flight on it fails over at once, so
			// retries may be as many as requests: max_requests (1024 by default).
			MaxRetries: wrapperspb.UInt32(envoyDefaultMaxRequests),
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{keyHTTPOptions: mustAny(opts)},
	}
	if u.Scheme == "https" {
		c.TransportSocket = &corev3.TransportSocket{
			Name:       nameTLS,
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(upstreamTLS(cfg, hostname))},
		}
	}
	return c, u.Host, nil
}

// upstreamTLS verifies the provider like a browser would. Without
// match_typed_subject_alt_names Envoy checks the chain but not the name
// (CertificateValidationContext in tls/v3/common.proto), and the keys would go to
// any host holding any certificate from a trusted CA.
func upstreamTLS(cfg *config.Config, hostname string) *tlsv3.UpstreamTlsContext {
	return &tlsv3.UpstreamTlsContext{
		Sni: hostname,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: cfg.Envoy.CAFile}},
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: tlsv3.SubjectAltNameMatcher_DNS,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: hostname}},
				}},
			}},
		},
	}
}

// extProcFilter is envoy-keypool on the pool's cluster: request and response headers
// of every attempt, no bodies, the pool named in trusted configuration.
func extProcFilter(cfg *config.Config, p *config.Pool) *extprocv3.ExternalProcessor {
	return &extprocv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: KeypoolCluster}},
			// Static metadata on every Process() stream of this filter: the client
			// cannot choose the pool.
			InitialMetadata: []*corev3.HeaderValue{{Key: cfg.Envoy.PoolMetadataKey, Value: p.Name}},
		},
		ProcessingMode: &extprocv3.ProcessingMode{
			RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
			ResponseHeaderMode:  extprocv3.ProcessingMode_SEND,
			RequestBodyMode:     extprocv3.ProcessingMode_NONE,
			ResponseBodyMode:    extprocv3.ProcessingMode_NONE,
			RequestTrailerMode:  extprocv3.ProcessingMode_SKIP,
			ResponseTrailerMode: extprocv3.ProcessingMode_SKIP,
		},
		MessageTimeout: durationpb.New(messageTimeout),
		// Without envoy-keypool no key is injected: fail the attempt (500 on a broken
		// stream, 504 on a timeout) rather than send the client's request keyless.
		FailureModeAllow: false,
	}
}

// retryPolicy is the key failover, on the cluster (see doc.go for why there).
func retryPolicy(cfg *config.Config, p *config.Pool) *routev3.RetryPolicy {
	return &routev3.RetryPolicy{
		// Only envoy-keypool's marker: it is added after the provider refused the key,
		// before any token was billed. Transport failures (reset, connect-failure, 5xx)
		// are left to the client's SDK, which knows whether its call may run twice.
		RetryOn: "retriable-headers",
		RetriableHeaders: []*routev3.HeaderMatcher{{
			Name:                 cfg.Envoy.RetryMarkerHeader,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
		}},
		// One attempt per key, plus one: after the last key failed, the next attempt
		// finds none usable and envoy-keypool answers it with the provider-shaped
		// exhaustion error (a local reply, which Envoy never retries).
		NumRetries: wrapperspb.UInt32(uint32(len(p.Keys))),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
			BaseInterval: durationpb.New(retryBaseInterval),
			MaxInterval:  durationpb.New(retryMaxInterval),
		},
	}
}

// keypoolCluster is the envoy-keypool replicas: gRPC over HTTP/2, health checked with
// the standard gRPC health service they serve on the ext_proc port.
func keypoolCluster(cfg *config.Config) (*clusterv3.Cluster, error) {
	var addrs [][2]string
	for i, a := range cfg.Envoy.KeypoolAddresses {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("envoy.keypool_addresses[%d]: %w", i, err)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return nil, fmt.Errorf("envoy.keypool_addresses[%d]: port %q: %w", i, port, err)
		}
		addrs = append(addrs, [2]string{host, port})
	}
	opts := &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	}
	return &clusterv3.Cluster{
		Name: KeypoolCluster,
		// Every replica an endpoint of its own, each health checked.
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(keypoolConnectTimeout),
		DnsLookupFamily:      clusterv3.Cluster_V4_PREFERRED,
		LoadAssignment:       loadAssignment(KeypoolCluster, addrs),
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority: corev3.RoutingPriority_DEFAULT,
			// One ext_proc stream per provider attempt in flight, open until the
			// provider's response headers: as many as all provider clusters allow.
			// Past max_requests the stream fails and the attempt answers 500.
			MaxRequests: wrapperspb.UInt32(uint32(envoyDefaultMaxRequests * max(1, len(cfg.Pools)))),
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{keyHTTPOptions: mustAny(opts)},
		HealthChecks: []*corev3.HealthCheck{{
			Timeout:            durationpb.New(healthTimeout),
			Interval:           durationpb.New(healthInterval),
			NoTrafficInterval:  durationpb.New(healthInterval),
			UnhealthyThreshold: wrapperspb.UInt32(healthUnhealthyThreshold),
			HealthyThreshold:   wrapperspb.UInt32(healthHealthyThreshold),
			// service_name "": the server's overall health (grpc.health.v1).
			HealthChecker: &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{}},
		}},
	}, nil
}

func loadAssignment(cluster string, hostPorts [][2]string) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, hp := range hostPorts {
		port, _ := strconv.ParseUint(hp[1], 10, 16) // checked by the callers
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address:       hp[0],
				PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
			}}},
		}}})
	}
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: cluster,
		Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
	}
}

func socketAddress(hostPort string) (*corev3.Address, error) {
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return nil, err
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", port, err)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(n)},
	}}}, nil
}

func httpFilter(name string, m proto.Message) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(m)}}
}

// mustAny packs a message built here; anypb.New fails only on a nil message.
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("envoy: pack %T: %v", m, err))
	}
	return a
}
