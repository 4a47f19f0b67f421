package envoy

import (
	"fmt"
	"net/url"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	upstreamcodecv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// providerRetryOn is the key failover's retry_on: envoy-keypool's marker, and a reset
// before any byte of the request left Envoy (a failed connect included: Envoy falls
// through to reset-before-request for it, retry_state_impl.cc wouldRetryFromReset).
// Neither can have been run, so neither can be billed, twice.
const providerRetryOn = "retriable-headers,reset-before-request"

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
		// Connections the provider did not use for idle_timeout are closed by Envoy
		// before the provider's own keep-alive timeout closes them: otherwise a request
		// may go out on a connection the provider is closing, and that reset comes
		// after the request left, which must not be retried (config.Route.IdleTimeout).
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(p.Route.EffectiveIdleTimeout())},
		// HTTP/1.1 to the provider: what the providers' SDKs speak, one request per
		// connection, nothing for ALPN to negotiate.
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
		}},
		// The cluster's chain wins over the router's upstream_http_filters and must
		// end with the upstream codec (upstream_request.cc).
		HttpFilters: []*hcmv3.HttpFilter{
			httpFilter(KeypoolFilterName, extProcFilter(cfg, p)),
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
		DnsLookupFamily:               clusterv3.Cluster_V4_PREFERRED,
		LoadAssignment:                loadAssignment(p.Name, []*corev3.Address{socketAddr(hostname, port)}),
		CircuitBreakers:               providerCircuitBreakers(p),
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

// providerCircuitBreakers sizes every limit of the provider cluster from N, the
// requests one Envoy may carry to the provider at once (route.max_concurrent_requests):
//
//   - max_connections N: HTTP/1.1 carries one request per connection, and a request
//     has one attempt in flight at a time (a retry starts after its attempt ended);
//   - max_pending_requests N: a burst may wait for N new connections at once;
//   - max_requests N;
//   - max_retries N: when a key hits its rate limit every request in flight on it
//     fails over at once; Envoy's default of 3 would forward the 429 of the fourth
//     (upstream_rq_retry_overflow).
//
// Past max_connections a request waits for a connection (pending); past
// max_pending_requests or max_requests Envoy answers 503 locally at once
// (common/conn_pool/conn_pool_base.cc), never retried (router.cc onUpstreamReset).
func providerCircuitBreakers(p *config.Pool) *clusterv3.CircuitBreakers {
	n := wrapperspb.UInt32(uint32(p.Route.EffectiveMaxConcurrentRequests()))
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxConnections:     n,
		MaxPendingRequests: n,
		MaxRequests:        n,
		MaxRetries:         n,
	}}}
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
				TrustedCa:                 &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: cfg.Envoy.CAFile}},
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{dnsSAN(hostname)},
			}},
		},
	}
}

func dnsSAN(name string) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{
		SanType: tlsv3.SubjectAltNameMatcher_DNS,
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: name}},
	}
}

// retryPolicy is the key failover, on the cluster (see doc.go for why there).
func retryPolicy(cfg *config.Config, p *config.Pool) *routev3.RetryPolicy {
	return &routev3.RetryPolicy{
		// envoy-keypool's marker is added after the provider refused the key, before
		// any token was billed; a reset before the request left reached no provider.
		// Resets after the request left and 5xx are left to the client's SDK, which
		// knows whether its call may run twice.
		RetryOn: providerRetryOn,
		RetriableHeaders: []*routev3.HeaderMatcher{{
			Name:                 cfg.Envoy.RetryMarkerHeader,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
		}},
		// One attempt per key, plus one: after the last key failed, the next attempt
		// finds none usable and envoy-keypool answers it with the provider-shaped
		// exhaustion error (a local reply, which Envoy never retries). And one more
		// for a reset before the request left, which uses a retry but no key.
		NumRetries: wrapperspb.UInt32(uint32(len(p.Keys) + extraProviderRetries)),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
			BaseInterval: durationpb.New(retryBaseInterval),
			MaxInterval:  durationpb.New(retryMaxInterval),
		},
	}
}
