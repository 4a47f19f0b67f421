package envoy

import (
	"errors"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// EnvoyConfig is an Envoy configuration as the checks read it: a bootstrap and, when
// it comes from a config dump, the route tables RDS delivered (its connection
// managers name them) and the version of the Envoy that dumped it.
type EnvoyConfig struct {
	Bootstrap *bootstrapv3.Bootstrap
	// Routes are route tables by name, for connection managers with rds.
	Routes map[string]*routev3.RouteConfiguration
	// Version is the Envoy version of a config dump ("1.37.0"); "" when unknown.
	Version string
}

// CheckLoad reports what Envoy refuses when it loads bs, beyond the protos' validation
// that ParseBootstrap already ran: cluster names used twice; a route naming a cluster
// that does not exist (static route tables validate their clusters by default,
// route.proto validate_clusters); an ext_proc filter whose gRPC cluster does not exist
// or does not speak HTTP/2; an HTTP filter chain not ending with the router, or an
// upstream filter chain not ending with envoy.filters.http.upstream_codec. The error
// joins one *Problem per finding.
func CheckLoad(bs *bootstrapv3.Bootstrap) error {
	return (&EnvoyConfig{Bootstrap: bs}).CheckLoad()
}

// CheckLoad is the package's CheckLoad for c.
func (c *EnvoyConfig) CheckLoad() error {
	ix := index(c.Bootstrap, c.Routes)
	errs := ix.problems
	for i, cl := range c.Bootstrap.GetStaticResources().GetClusters() {
		if first := ix.clusterIndex[cl.GetName()]; first != i {
			errs = append(errs, resourcePath("cluster", cl.GetName()).problem("the name is also clusters[%d]'s; Envoy refuses the second", first))
		}
	}
	var extProcs []filterEntry
	for _, cl := range ix.clusters {
		if cl.options != nil && cl.options.GetHttpFilters() != nil {
			errs = append(errs, checkUpstreamChain(cl.filters)...)
		}
		extProcs = append(extProcs, cl.filters...)
	}
	for _, h := range ix.hcms {
		fs := h.filters
		if len(fs) == 0 || fs[len(fs)-1].filter.GetTypedConfig().GetTypeUrl() != typeRouter {
			errs = append(errs, h.path.f("http_filters").problem("the chain must end with %s", nameRouter))
		}
		if len(h.upstream) > 0 {
			errs = append(errs, checkUpstreamChain(h.upstream)...)
		}
		extProcs = append(extProcs, h.filters...)
		extProcs = append(extProcs, h.upstream...)
		if h.table == nil || (h.table.GetValidateClusters() != nil && !h.table.GetValidateClusters().GetValue()) {
			continue
		}
		for _, r := range h.routes() {
			for _, name := range routeClusters(r.route) {
				if _, ok := ix.clusterIndex[name]; !ok {
					errs = append(errs, r.path.f("route").problem("unknown cluster %q", name))
				}
			}
		}
	}
	for _, f := range extProcs {
		if f.extProc == nil {
			continue
		}
		name := f.extProc.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		if name == "" {
			continue // google_grpc or http_service: not a cluster reference
		}
		at := f.path.f("typed_config.grpc_service.envoy_grpc.cluster_name")
		cl, ok := ix.cluster(name)
		if !ok {
			errs = append(errs, at.problem("ext_proc names unknown cluster %q", name))
			continue
		}
		if !cl.http2() {
			errs = append(errs, at.problem("ext_proc cluster %q must speak HTTP/2 for gRPC (%s explicit_http_config.http2_protocol_options)", name, keyHTTPOptions))
		}
	}
	return errors.Join(errs...)
}

// checkUpstreamChain is Envoy's rule for upstream HTTP filters: the codec filter is
// the terminal one, last and only last (router/upstream_request.cc).
func checkUpstreamChain(fs []filterEntry) []error {
	var errs []error
	for i, f := range fs {
		isCodec := f.filter.GetTypedConfig().GetTypeUrl() == typeUpstreamCodec
		switch {
		case i == len(fs)-1 && !isCodec:
			errs = append(errs, f.path.problem("the chain ends with %q; Envoy requires %s last", f.filter.GetName(), nameUpstreamCodec))
		case i < len(fs)-1 && isCodec:
			errs = append(errs, f.path.problem("%s is terminal but not last", nameUpstreamCodec))
		}
	}
	return errs
}
