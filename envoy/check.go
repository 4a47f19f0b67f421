package envoy

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// Type URLs the checks look for.
const (
	typeHCM           = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	typeRouter        = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	typeUpstreamCodec = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
	typeHTTPOptions   = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// CheckLoad reports what Envoy refuses when it loads bs, beyond the protos' validation
// that ParseBootstrap already ran: cluster names used twice; a route naming a cluster
// that does not exist (static route tables validate their clusters by default,
// route.proto validate_clusters); an ext_proc filter whose gRPC cluster does not exist
// or does not speak HTTP/2; an HTTP filter chain not ending with the router, or an
// upstream filter chain not ending with envoy.filters.http.upstream_codec.
func CheckLoad(bs *bootstrapv3.Bootstrap) error {
	ix, errs := index(bs)
	for i, c := range bs.GetStaticResources().GetClusters() {
		if first := ix.clusterIndex[c.GetName()]; first != i {
			errs = append(errs, fmt.Errorf("static_resources.clusters[%d]: cluster name %q is also clusters[%d]'s", i, c.GetName(), first))
		}
	}
	for _, c := range ix.clusters {
		if c.options != nil && c.options.GetHttpFilters() != nil {
			errs = append(errs, checkUpstreamChain(c.where+" "+keyHTTPOptions+".http_filters", c.options.GetHttpFilters())...)
		}
	}
	for _, h := range ix.hcms {
		fs := h.hcm.GetHttpFilters()
		if len(fs) == 0 || fs[len(fs)-1].GetTypedConfig().GetTypeUrl() != typeRouter {
			errs = append(errs, fmt.Errorf("%s http_filters: the chain must end with %s", h.where, nameRouter))
		}
		if h.router != nil && len(h.router.GetUpstreamHttpFilters()) > 0 {
			errs = append(errs, checkUpstreamChain(h.where+" router upstream_http_filters", h.router.GetUpstreamHttpFilters())...)
		}
		if h.hcm.GetRouteConfig().GetValidateClusters() != nil && !h.hcm.GetRouteConfig().GetValidateClusters().GetValue() {
			continue
		}
		for _, r := range h.routes() {
			for _, name := range routeClusters(r.route) {
				if _, ok := ix.clusterIndex[name]; !ok {
					errs = append(errs, fmt.Errorf("%s: unknown cluster %q", r.where, name))
				}
			}
		}
	}
	for _, f := range ix.extProcs {
		name := f.config.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		if name == "" {
			continue // google_grpc or http_service: not a cluster reference
		}
		c, ok := ix.cluster(name)
		if !ok {
			errs = append(errs, fmt.Errorf("%s: ext_proc grpc_service names unknown cluster %q", f.where, name))
			continue
		}
		if !c.http2() {
			errs = append(errs, fmt.Errorf("%s: ext_proc cluster %q must speak HTTP/2 for gRPC (%s explicit_http_config.http2_protocol_options)", f.where, name, keyHTTPOptions))
		}
	}
	return errors.Join(errs...)
}

// checkUpstreamChain is Envoy's rule for upstream HTTP filters: the codec filter is
// the terminal one, last and only last.
func checkUpstreamChain(where string, fs []*hcmv3.HttpFilter) []error {
	var errs []error
	for i, f := range fs {
		isCodec := f.GetTypedConfig().GetTypeUrl() == typeUpstreamCodec
		switch {
		case i == len(fs)-1 && !isCodec:
			errs = append(errs, fmt.Errorf("%s: the chain ends with %q; Envoy requires %s last", where, f.GetName(), nameUpstreamCodec))
		case i < len(fs)-1 && isCodec:
			errs = append(errs, fmt.Errorf("%s[%d]: %s is terminal but not last", where, i, nameUpstreamCodec))
		}
	}
	return errs
}

// retryOnBeforeProvider are the retry_on conditions that retry only what the provider
// never received or refused before billing: envoy-keypool's marker, a failed connect, a
// stream refused (HTTP/2 REFUSED_STREAM) or reset before the request was sent.
var retryOnBeforeProvider = []string{"retriable-headers", "connect-failure", "refused-stream", "reset-before-request"}

// CheckKeypool reports where bs does not run envoy-keypool as cfg expects it. For
// every route: its cluster's upstream filters hold the envoy-keypool ext_proc filter,
// naming a pool of cfg through the pool_metadata_key initial metadata, with request and
// response headers SEND, bodies NONE, failure_mode_allow false and a message_timeout
// above envoy-keypool's Redis timeout; the retry policy in force (the cluster's, else
// the route's, else the virtual host's) retries on the marker header alone, with
// num_retries at least the pool's size; the request body is buffered for replay;
// x-envoy-attempt-count is sent; the marker is removed from responses; the cluster's
// circuit breaker lets every request in flight retry at once. The connection manager
// must make x-request-id Envoy's own, the envoy-keypool cluster must be health checked
// and reach the replicas cfg names, and every pool of cfg must have a route.
func CheckKeypool(bs *bootstrapv3.Bootstrap, cfg *config.Config) error {
	ix, errs := index(bs)
	e := cfg.Envoy
	routed := map[string]bool{}
	keypoolClusters := map[string]bool{}
	providerMaxRequests := 0
	counted := map[string]bool{}
	for _, h := range ix.hcms {
		errs = append(errs, checkRequestID(h)...)
		for _, r := range h.routes() {
			for _, name := range routeClusters(r.route) {
				c, ok := ix.cluster(name)
				if !ok {
					continue // CheckLoad's
				}
				where := fmt.Sprintf("%s (cluster %q)", r.where, name)
				chain := h.router.GetUpstreamHttpFilters()
				if c.options != nil && c.options.GetHttpFilters() != nil {
					chain = c.options.GetHttpFilters()
				}
				procs := extProcsIn(chain)
				if len(procs) != 1 {
					errs = append(errs, fmt.Errorf("%s: %d envoy-keypool ext_proc filters in the cluster's upstream filters, want 1: requests would reach the provider without a pool key", where, len(procs)))
					continue
				}
				ep := procs[0]
				pool, err := checkExtProc(where, ep, cfg)
				if err != nil {
					errs = append(errs, err)
				}
				keypoolClusters[ep.GetGrpcService().GetEnvoyGrpc().GetClusterName()] = true
				if pool == nil {
					continue
				}
				routed[pool.Name] = true
				errs = append(errs, checkRetry(where, r, c, pool, e.RetryMarkerHeader)...)
				if r.route.GetRequestBodyBufferLimit() == nil && r.route.GetPerRequestBufferLimitBytes() == nil &&
					r.vhost.GetRequestBodyBufferLimit() == nil && r.vhost.GetPerRequestBufferLimitBytes() == nil {
					errs = append(errs, fmt.Errorf("%s: no request_body_buffer_limit on the route or virtual host: request bodies over the connection buffer (1 MiB) are never retried with the next key", where))
				}
				if e.AttemptCountHeader == "x-envoy-attempt-count" && !r.vhost.GetIncludeRequestAttemptCount() {
					errs = append(errs, fmt.Errorf("%s: virtual host %q lacks include_request_attempt_count: true: envoy-keypool reads x-envoy-attempt-count", where, r.vhost.GetName()))
				}
				if !slices.Contains(r.route.GetResponseHeadersToRemove(), e.RetryMarkerHeader) &&
					!slices.Contains(r.vhost.GetResponseHeadersToRemove(), e.RetryMarkerHeader) &&
					!slices.Contains(h.hcm.GetRouteConfig().GetResponseHeadersToRemove(), e.RetryMarkerHeader) {
					errs = append(errs, fmt.Errorf("%s: %s is in no response_headers_to_remove: the marker reaches clients when retries run out", where, e.RetryMarkerHeader))
				}
				if !counted[name] {
					counted[name] = true
					maxRequests, err := checkCircuitBreaker(c)
					if err != nil {
						errs = append(errs, fmt.Errorf("%s: %w", where, err))
					}
					providerMaxRequests += maxRequests
				}
			}
		}
	}
	for name := range keypoolClusters {
		if c, ok := ix.cluster(name); ok {
			errs = append(errs, checkKeypoolCluster(c, e.KeypoolAddresses, providerMaxRequests)...)
		}
	}
	for _, p := range cfg.Pools {
		if !routed[p.Name] {
			errs = append(errs, fmt.Errorf("pool %q has no route to a cluster whose ext_proc filter names it", p.Name))
		}
	}
	return errors.Join(errs...)
}

// checkRequestID: envoy-keypool keeps a request's tried keys under its x-request-id,
// which must be generated by Envoy, not chosen by the client.
func checkRequestID(h *hcmEntry) []error {
	var errs []error
	if g := h.hcm.GetGenerateRequestId(); g != nil && !g.GetValue() {
		errs = append(errs, fmt.Errorf("%s: generate_request_id false: envoy-keypool needs x-request-id", h.where))
	}
	if !h.hcm.GetUseRemoteAddress().GetValue() || h.hcm.GetPreserveExternalRequestId() {
		errs = append(errs, fmt.Errorf("%s: want use_remote_address: true and preserve_external_request_id unset, so that Envoy replaces a client's x-request-id (envoy-keypool keys a request's tried keys by it)", h.where))
	}
	return errs
}

// checkExtProc checks the envoy-keypool filter and returns the pool it names.
func checkExtProc(where string, ep *extprocv3.ExternalProcessor, cfg *config.Config) (*config.Pool, error) {
	var errs []error
	pm := ep.GetProcessingMode()
	if m := pm.GetRequestHeaderMode(); m != extprocv3.ProcessingMode_SEND {
		errs = append(errs, fmt.Errorf("processing_mode.request_header_mode %s, want SEND", m))
	}
	if m := pm.GetResponseHeaderMode(); m != extprocv3.ProcessingMode_SEND {
		errs = append(errs, fmt.Errorf("processing_mode.response_header_mode %s, want SEND: key failures would never fail over", m))
	}
	if m := pm.GetRequestBodyMode(); m != extprocv3.ProcessingMode_NONE {
		errs = append(errs, fmt.Errorf("processing_mode.request_body_mode %s, want NONE", m))
	}
	if m := pm.GetResponseBodyMode(); m != extprocv3.ProcessingMode_NONE {
		errs = append(errs, fmt.Errorf("processing_mode.response_body_mode %s, want NONE: streamed completions would wait for envoy-keypool", m))
	}
	if ep.GetFailureModeAllow() {
		errs = append(errs, errors.New("failure_mode_allow true: without envoy-keypool requests would go out with no pool key"))
	}
	timeout := messageTimeout
	if ep.GetMessageTimeout() != nil {
		timeout = ep.GetMessageTimeout().AsDuration()
	}
	if r := cfg.State.Redis; r != nil && r.Timeout.Std() >= timeout {
		errs = append(errs, fmt.Errorf("message_timeout %s is not above envoy-keypool's state.redis.timeout %s", timeout, r.Timeout.Std()))
	}
	var pool *config.Pool
	var names []string
	for _, hv := range ep.GetGrpcService().GetInitialMetadata() {
		if strings.EqualFold(hv.GetKey(), cfg.Envoy.PoolMetadataKey) {
			names = append(names, headerValue(hv))
		}
	}
	switch {
	case len(names) != 1:
		errs = append(errs, fmt.Errorf("grpc_service.initial_metadata: %d %q entries, want 1 naming the pool", len(names), cfg.Envoy.PoolMetadataKey))
	default:
		p, ok := cfg.Pool(names[0])
		if !ok {
			errs = append(errs, fmt.Errorf("grpc_service.initial_metadata names pool %q, which the envoy-keypool config lacks", names[0]))
		}
		pool = p
	}
	if err := errors.Join(errs...); err != nil {
		return pool, fmt.Errorf("%s: envoy-keypool filter: %w", where, err)
	}
	return pool, nil
}

// checkRetry checks the retry policy Envoy applies to r's requests to cluster c: the
// cluster's replaces the route's, which replaces the virtual host's (no merging;
// http_protocol_options.proto and route_components.proto).
func checkRetry(where string, r routeEntry, c *clusterEntry, pool *config.Pool, marker string) []error {
	rp, from := c.options.GetRetryPolicy(), "cluster"
	if rp == nil {
		rp, from = r.route.GetRoute().GetRetryPolicy(), "route"
	}
	if rp == nil {
		rp, from = r.vhost.GetRetryPolicy(), "virtual host"
	}
	if rp == nil {
		return []error{fmt.Errorf("%s: no retry policy on the cluster, route or virtual host: key failures are never retried", where)}
	}
	where = fmt.Sprintf("%s: %s retry_policy", where, from)
	var errs []error
	var on []string
	for _, tok := range strings.Split(rp.GetRetryOn(), ",") {
		if tok = strings.TrimSpace(tok); tok != "" {
			on = append(on, tok)
		}
	}
	if !slices.Contains(on, "retriable-headers") {
		errs = append(errs, fmt.Errorf("%s: retry_on %q lacks retriable-headers", where, rp.GetRetryOn()))
	}
	for _, tok := range on {
		if !slices.Contains(retryOnBeforeProvider, tok) {
			errs = append(errs, fmt.Errorf("%s: retry_on %q retries requests the provider may have run and billed: an LLM call is not idempotent", where, tok))
		}
	}
	found := false
	for _, m := range rp.GetRetriableHeaders() {
		if strings.EqualFold(m.GetName(), marker) && m.GetPresentMatch() && !m.GetInvertMatch() {
			found = true
		}
	}
	if !found {
		errs = append(errs, fmt.Errorf("%s: retriable_headers lacks {name: %s, present_match: true}", where, marker))
	}
	retries := uint32(1) // RetryPolicy.num_retries default
	if rp.GetNumRetries() != nil {
		retries = rp.GetNumRetries().GetValue()
	}
	if int(retries) < len(pool.Keys) {
		errs = append(errs, fmt.Errorf("%s: num_retries %d is below the %d keys of pool %q: the last keys are never tried", where, retries, len(pool.Keys), pool.Name))
	}
	return errs
}

// checkCircuitBreaker checks that every request in flight may fail over at once and
// returns the cluster's max_requests.
func checkCircuitBreaker(c *clusterEntry) (int, error) {
	maxRequests, maxRetries := envoyDefaultMaxRequests, 3 // circuit_breaker.proto defaults
	var budget *clusterv3.CircuitBreakers_Thresholds_RetryBudget
	for _, t := range c.cluster.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		if t.GetMaxRequests() != nil {
			maxRequests = int(t.GetMaxRequests().GetValue())
		}
		if t.GetMaxRetries() != nil {
			maxRetries = int(t.GetMaxRetries().GetValue())
		}
		budget = t.GetRetryBudget()
	}
	if budget != nil {
		// A retry budget replaces max_retries (circuit_breaker.proto).
		if pct := budget.GetBudgetPercent(); pct == nil || pct.GetValue() < 100 {
			return maxRequests, errors.New("circuit_breakers retry_budget below 100%: in a rate limit storm some requests cannot fail over and their 429 reaches the client")
		}
		return maxRequests, nil
	}
	if maxRetries < maxRequests {
		return maxRequests, fmt.Errorf("circuit_breakers max_retries %d is below max_requests %d: when a key hits its rate limit every request in flight retries at once, and past max_retries Envoy forwards the 429 instead", maxRetries, maxRequests)
	}
	return maxRequests, nil
}

func checkKeypoolCluster(c *clusterEntry, want []string, providerMaxRequests int) []error {
	var errs []error
	hasGRPCHealth := false
	for _, hc := range c.cluster.GetHealthChecks() {
		if hc.GetGrpcHealthCheck() != nil {
			hasGRPCHealth = true
		}
	}
	if !hasGRPCHealth {
		errs = append(errs, fmt.Errorf("%s: no grpc_health_check: a replica that is down keeps receiving ext_proc streams", c.where))
	}
	var got []string
	for _, lle := range c.cluster.GetLoadAssignment().GetEndpoints() {
		for _, lbe := range lle.GetLbEndpoints() {
			sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
			got = append(got, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
		}
	}
	if !sameSet(got, want) {
		errs = append(errs, fmt.Errorf("%s: endpoints %v, but envoy.keypool_addresses says %v", c.where, got, want))
	}
	maxRequests := envoyDefaultMaxRequests
	for _, t := range c.cluster.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() == corev3.RoutingPriority_DEFAULT && t.GetMaxRequests() != nil {
			maxRequests = int(t.GetMaxRequests().GetValue())
		}
	}
	if maxRequests < providerMaxRequests {
		errs = append(errs, fmt.Errorf("%s: circuit_breakers max_requests %d is below the %d provider requests the routes allow in flight: each holds an ext_proc stream, and the ones past the limit fail with 500", c.where, maxRequests, providerMaxRequests))
	}
	return errs
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func headerValue(hv *corev3.HeaderValue) string {
	if len(hv.GetRawValue()) > 0 {
		return string(hv.GetRawValue())
	}
	return hv.GetValue()
}

// routeClusters are the clusters a route sends to by name.
func routeClusters(r *routev3.Route) []string {
	a := r.GetRoute()
	if a == nil {
		return nil
	}
	if c := a.GetCluster(); c != "" {
		return []string{c}
	}
	var out []string
	for _, wc := range a.GetWeightedClusters().GetClusters() {
		out = append(out, wc.GetName())
	}
	return out
}

// extProcsIn decodes the ext_proc filters of an upstream filter chain.
func extProcsIn(fs []*hcmv3.HttpFilter) []*extprocv3.ExternalProcessor {
	var out []*extprocv3.ExternalProcessor
	for _, f := range fs {
		if f.GetTypedConfig().GetTypeUrl() != typeExtProc {
			continue
		}
		ep := &extprocv3.ExternalProcessor{}
		if f.GetTypedConfig().UnmarshalTo(ep) == nil {
			out = append(out, ep)
		}
	}
	return out
}

// bootstrapIndex is the part of a bootstrap the checks walk, decoded once.
type bootstrapIndex struct {
	clusters     []*clusterEntry
	clusterIndex map[string]int // first index of each name
	hcms         []*hcmEntry
	extProcs     []extProcEntry // every ext_proc filter, wherever it sits
}

type clusterEntry struct {
	where   string
	cluster *clusterv3.Cluster
	options *httpv3.HttpProtocolOptions // nil when absent
}

// http2 reports whether Envoy speaks HTTP/2 to the cluster without negotiating.
func (c *clusterEntry) http2() bool {
	if c.options != nil {
		return c.options.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
	}
	return c.cluster.GetHttp2ProtocolOptions() != nil //nolint:staticcheck // the deprecated field still counts.
}

type hcmEntry struct {
	where  string
	hcm    *hcmv3.HttpConnectionManager
	router *routerv3.Router // nil when the chain has no router
}

type routeEntry struct {
	where string
	vhost *routev3.VirtualHost
	route *routev3.Route
}

type extProcEntry struct {
	where  string
	config *extprocv3.ExternalProcessor
}

func (ix *bootstrapIndex) cluster(name string) (*clusterEntry, bool) {
	i, ok := ix.clusterIndex[name]
	if !ok {
		return nil, false
	}
	return ix.clusters[i], true
}

// routes lists the inline route table's routes, in order.
func (h *hcmEntry) routes() []routeEntry {
	var out []routeEntry
	for _, vh := range h.hcm.GetRouteConfig().GetVirtualHosts() {
		for i, r := range vh.GetRoutes() {
			out = append(out, routeEntry{
				where: fmt.Sprintf("%s virtual host %q route[%d] %q", h.where, vh.GetName(), i, r.GetName()),
				vhost: vh,
				route: r,
			})
		}
	}
	return out
}

// index decodes what the checks need; a typed config that does not decode is an
// error (ParseBootstrap already refuses those, a bootstrap built in code may not).
func index(bs *bootstrapv3.Bootstrap) (*bootstrapIndex, []error) {
	ix := &bootstrapIndex{clusterIndex: map[string]int{}}
	var errs []error
	for i, c := range bs.GetStaticResources().GetClusters() {
		e := &clusterEntry{where: fmt.Sprintf("cluster %q", c.GetName()), cluster: c}
		if a, ok := c.GetTypedExtensionProtocolOptions()[keyHTTPOptions]; ok {
			e.options = &httpv3.HttpProtocolOptions{}
			if err := unpackAs(a, typeHTTPOptions, e.options); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", e.where, keyHTTPOptions, err))
				e.options = nil
			}
		}
		for j, f := range e.options.GetHttpFilters() {
			ix.addExtProc(fmt.Sprintf("%s %s.http_filters[%d]", e.where, keyHTTPOptions, j), f, &errs)
		}
		ix.clusters = append(ix.clusters, e)
		if _, dup := ix.clusterIndex[c.GetName()]; !dup {
			ix.clusterIndex[c.GetName()] = i
		}
	}
	for _, l := range bs.GetStaticResources().GetListeners() {
		for ci, fc := range l.GetFilterChains() {
			for fi, f := range fc.GetFilters() {
				if f.GetTypedConfig().GetTypeUrl() != typeHCM {
					continue
				}
				h := &hcmEntry{where: fmt.Sprintf("listener %q filter_chains[%d].filters[%d]", l.GetName(), ci, fi), hcm: &hcmv3.HttpConnectionManager{}}
				if err := f.GetTypedConfig().UnmarshalTo(h.hcm); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", h.where, err))
					continue
				}
				for hi, hf := range h.hcm.GetHttpFilters() {
					w := fmt.Sprintf("%s http_filters[%d]", h.where, hi)
					if hf.GetTypedConfig().GetTypeUrl() == typeRouter {
						h.router = &routerv3.Router{}
						if err := hf.GetTypedConfig().UnmarshalTo(h.router); err != nil {
							errs = append(errs, fmt.Errorf("%s: %w", w, err))
						}
						for ui, uf := range h.router.GetUpstreamHttpFilters() {
							ix.addExtProc(fmt.Sprintf("%s upstream_http_filters[%d]", w, ui), uf, &errs)
						}
						continue
					}
					ix.addExtProc(w, hf, &errs)
				}
				ix.hcms = append(ix.hcms, h)
			}
		}
	}
	return ix, errs
}

func (ix *bootstrapIndex) addExtProc(where string, f *hcmv3.HttpFilter, errs *[]error) {
	if f.GetTypedConfig().GetTypeUrl() != typeExtProc {
		return
	}
	ep := &extprocv3.ExternalProcessor{}
	if err := f.GetTypedConfig().UnmarshalTo(ep); err != nil {
		*errs = append(*errs, fmt.Errorf("%s: %w", where, err))
		return
	}
	ix.extProcs = append(ix.extProcs, extProcEntry{where: fmt.Sprintf("%s %q", where, f.GetName()), config: ep})
}

func unpackAs(a *anypb.Any, typeURL string, m proto.Message) error {
	if a.GetTypeUrl() != typeURL {
		return fmt.Errorf("typed config %q, want %s", a.GetTypeUrl(), typeURL)
	}
	return a.UnmarshalTo(m)
}
