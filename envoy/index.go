package envoy

import (
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs the checks look for.
const (
	typeHCM             = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	typeRouter          = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	typeUpstreamCodec   = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
	typeHTTPOptions     = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	typeExtProc         = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
	typeUpstreamTLS     = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	typeWithMatcher     = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
	typeJSONToMeta      = "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata"
	typeFilterConfig    = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
	typeExtProcPerRoute = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
)

// bootstrapIndex is the part of a bootstrap the checks walk, decoded once, each piece
// with the path of the field it came from.
type bootstrapIndex struct {
	clusters     []*clusterEntry
	clusterIndex map[string]int // first index of each name
	hcms         []*hcmEntry
	problems     []error // typed configs that do not decode
}

type clusterEntry struct {
	path    fieldPath // the cluster resource
	cluster *clusterv3.Cluster
	options *httpv3.HttpProtocolOptions // nil when absent
	optPath fieldPath                   // typed_extension_protocol_options[HttpProtocolOptions]
	filters []filterEntry               // options.http_filters, decoded
}

// http2 reports whether Envoy speaks HTTP/2 to the cluster without negotiating.
func (c *clusterEntry) http2() bool {
	if c.options != nil {
		return c.options.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
	}
	return c.cluster.GetHttp2ProtocolOptions() != nil //nolint:staticcheck // the deprecated field still counts.
}

// filterEntry is an HTTP filter of a chain and, for ext_proc, its configuration.
type filterEntry struct {
	path    fieldPath // the filter (an element of http_filters)
	filter  *hcmv3.HttpFilter
	extProc *extprocv3.ExternalProcessor // nil unless an ext_proc filter
}

type hcmEntry struct {
	path       fieldPath // the connection manager's typed_config
	hcm        *hcmv3.HttpConnectionManager
	filters    []filterEntry
	router     *routerv3.Router // nil when the chain has no router
	routerPath fieldPath
	upstream   []filterEntry               // router.upstream_http_filters
	table      *routev3.RouteConfiguration // inline or resolved from RDS; nil when unknown
	tablePath  fieldPath
}

type routeEntry struct {
	path      fieldPath // the route
	vhost     *routev3.VirtualHost
	vhostPath fieldPath
	route     *routev3.Route
}

// routes lists the route table's routes, in order.
func (h *hcmEntry) routes() []routeEntry {
	var out []routeEntry
	for vi, vh := range h.table.GetVirtualHosts() {
		vp := h.tablePath.f("virtual_hosts").i(vi)
		for ri, r := range vh.GetRoutes() {
			out = append(out, routeEntry{path: vp.f("routes").i(ri), vhost: vh, vhostPath: vp, route: r})
		}
	}
	return out
}

func (ix *bootstrapIndex) cluster(name string) (*clusterEntry, bool) {
	i, ok := ix.clusterIndex[name]
	if !ok {
		return nil, false
	}
	return ix.clusters[i], true
}

// index decodes what the checks need. A typed config that does not decode is a
// problem (ParseBootstrap already refuses those; a bootstrap built in code may not).
// routeConfigs are route tables by name, for connection managers that name theirs
// through RDS (a config dump has them); nil for a plain bootstrap.
func index(bs *bootstrapv3.Bootstrap, routeConfigs map[string]*routev3.RouteConfiguration) *bootstrapIndex {
	ix := &bootstrapIndex{clusterIndex: map[string]int{}}
	for i, c := range bs.GetStaticResources().GetClusters() {
		e := &clusterEntry{path: resourcePath("cluster", c.GetName()), cluster: c}
		e.optPath = e.path.f("typed_extension_protocol_options").k(keyHTTPOptions)
		if a, ok := c.GetTypedExtensionProtocolOptions()[keyHTTPOptions]; ok {
			e.options = &httpv3.HttpProtocolOptions{}
			if !ix.unpack(e.optPath, a, typeHTTPOptions, e.options) {
				e.options = nil
			}
		}
		e.filters = ix.filters(e.optPath.f("http_filters"), e.options.GetHttpFilters())
		ix.clusters = append(ix.clusters, e)
		if _, dup := ix.clusterIndex[c.GetName()]; !dup {
			ix.clusterIndex[c.GetName()] = i
		}
	}
	for _, l := range bs.GetStaticResources().GetListeners() {
		lp := resourcePath("listener", l.GetName())
		for ci, fc := range l.GetFilterChains() {
			for fi, f := range fc.GetFilters() {
				if f.GetTypedConfig().GetTypeUrl() != typeHCM {
					continue
				}
				h := &hcmEntry{path: lp.f("filter_chains").i(ci).f("filters").i(fi).f("typed_config"), hcm: &hcmv3.HttpConnectionManager{}}
				if !ix.unpack(h.path, f.GetTypedConfig(), typeHCM, h.hcm) {
					continue
				}
				h.filters = ix.filters(h.path.f("http_filters"), h.hcm.GetHttpFilters())
				for _, hf := range h.filters {
					if hf.filter.GetTypedConfig().GetTypeUrl() != typeRouter {
						continue
					}
					h.router, h.routerPath = &routerv3.Router{}, hf.path.f("typed_config")
					if ix.unpack(h.routerPath, hf.filter.GetTypedConfig(), typeRouter, h.router) {
						h.upstream = ix.filters(h.routerPath.f("upstream_http_filters"), h.router.GetUpstreamHttpFilters())
					}
				}
				switch {
				case h.hcm.GetRouteConfig() != nil:
					h.table, h.tablePath = h.hcm.GetRouteConfig(), h.path.f("route_config")
				case h.hcm.GetRds() != nil:
					name := h.hcm.GetRds().GetRouteConfigName()
					if rc, ok := routeConfigs[name]; ok {
						h.table, h.tablePath = rc, resourcePath("route_configuration", name)
					}
				}
				ix.hcms = append(ix.hcms, h)
			}
		}
	}
	return ix
}

// filters decodes the ext_proc filters of a chain.
func (ix *bootstrapIndex) filters(at fieldPath, fs []*hcmv3.HttpFilter) []filterEntry {
	var out []filterEntry
	for i, f := range fs {
		e := filterEntry{path: at.i(i), filter: f}
		if f.GetTypedConfig().GetTypeUrl() == typeExtProc {
			ep := &extprocv3.ExternalProcessor{}
			if ix.unpack(e.path.f("typed_config"), f.GetTypedConfig(), typeExtProc, ep) {
				e.extProc = ep
			}
		}
		out = append(out, e)
	}
	return out
}

func (ix *bootstrapIndex) unpack(at fieldPath, a *anypb.Any, typeURL string, m proto.Message) bool {
	if a.GetTypeUrl() != typeURL {
		ix.problems = append(ix.problems, at.problem("typed config %q, want %s", a.GetTypeUrl(), typeURL))
		return false
	}
	if err := a.UnmarshalTo(m); err != nil {
		ix.problems = append(ix.problems, at.problem("%v", err))
		return false
	}
	return true
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
