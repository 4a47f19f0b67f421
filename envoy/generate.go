package envoy

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// clientIdentityHeaders are the headers through which Envoy's connection manager tells
// the upstream who the client is (conn_manager_utility.cc mutateRequestHeaders). The
// route table removes them: the router applies route header operations before the
// upstream filters and the provider (router.cc decodeHeaders, finalizeRequestHeaders).
var clientIdentityHeaders = []string{"x-forwarded-for", "x-forwarded-proto", "x-envoy-external-address"}

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
	modelFromBody := false
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
		modelFromBody = modelFromBody || bodyNamesModel(p.Provider)
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

	var filters []*hcmv3.HttpFilter
	if modelFromBody {
		filters = append(filters, modelFilter(e.RequestBodyBufferLimit))
	}
	filters = append(filters, httpFilter(nameRouter, &routerv3.Router{
		// Leaves out x-envoy-expected-rq-timeout-ms and x-envoy-original-path (the
		// client's path before the prefix rewrite) from what reaches the provider, and
		// x-envoy-upstream-service-time from responses. x-envoy-attempt-count is set
		// regardless (router.cc decodeHeaders and doRetry), which envoy-keypool needs.
		SuppressEnvoyHeaders: true,
	}))

	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "llm",
		// Envoy is the edge: with use_remote_address every client is external (no
		// address is trusted by default since Envoy 1.33), so the connection manager
		// replaces any client x-request-id with a fresh one (envoy-keypool keys a
		// request's tried keys by it; a propagated id would share them between
		// requests) and drops x-envoy-retry-on, x-envoy-max-retries and
		// x-envoy-upstream-rq-timeout-ms, with which a client could change the failover
		// (conn_manager_utility.cc mutateRequestHeaders, cleanInternalHeaders).
		UseRemoteAddress: wrapperspb.Bool(true),
		// A non-streamed completion sends nothing until the model is done: Envoy's
		// default 5 min stream idle timeout would cut long generations.
		StreamIdleTimeout: durationpb.New(e.RouteTimeout.Std()),
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "llm",
			// Who the client is stays with Envoy; see clientIdentityHeaders.
			RequestHeadersToRemove: slices.Clone(clientIdentityHeaders),
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
		HttpFilters: filters,
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
	r := &routev3.Route{
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
	if !bodyNamesModel(p.Provider) {
		r.TypedPerFilterConfig = map[string]*anypb.Any{nameJSONToMetadata: mustAny(&routev3.FilterConfig{Disabled: true})}
	}
	return r
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
