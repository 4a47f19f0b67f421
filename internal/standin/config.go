package standin

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Type URLs of the extensions the stand-in understands.
const (
	typeHCM          = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	typeRouter       = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	typeExtProc      = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
	typeUpstreamCdc  = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
	typeHTTPProtoOpt = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	typeUpstreamTLS  = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	keyHTTPProtoOpt  = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// Envoy defaults the stand-in applies when the configuration is silent.
const (
	defaultRouteTimeout     = 15 * time.Second // RouteAction.timeout
	defaultBufferLimit      = 1 << 20          // Listener.per_connection_buffer_limit_bytes
	defaultConnectTimeout   = 5 * time.Second  // Cluster.connect_timeout
	defaultMaxRetries       = 3                // CircuitBreakers.Thresholds.max_retries
	defaultMessageTimeout   = 200 * time.Millisecond
	defaultStatusOnError    = 500
	defaultPanicThreshold   = 50.0
	defaultNoTrafficHCEvery = 60 * time.Second
)

// config is the part of a Bootstrap the stand-in runs, checked and resolved.
type config struct {
	listenAddr string
	hcm        *hcmConfig
	clusters   map[string]*clusterConfig
}

type hcmConfig struct {
	generateRequestID            bool
	preserveExternalRequestID    bool
	useRemoteAddress             bool
	alwaysSetRequestIDInResponse bool
	allowHTTP2                   bool
	suppressEnvoyHeaders         bool
	xffNumTrustedHops            uint32
	skipXffAppend                bool
	via                          string
	internal                     internalAddresses
	bufferLimit                  uint64
	routes                       *routeConfig
	downstream                   []*downstreamFilter // http_filters before the router
	routerFilters                []*filterConfig
}

// buildConfig reads what the stand-in supports from bs and rejects the rest.
func buildConfig(bs *bootstrapv3.Bootstrap) (*config, error) {
	if err := onlyFields("bootstrap", bs, "node", "static_resources", "admin", "layered_runtime", "stats_config", "cluster_manager", "overload_manager"); err != nil {
		return nil, err
	}
	sr := bs.GetStaticResources()
	if err := onlyFields("static_resources", sr, "listeners", "clusters"); err != nil {
		return nil, err
	}
	if len(sr.GetListeners()) == 0 {
		return nil, errors.New("static_resources.listeners: the stand-in needs one listener")
	}
	if len(sr.GetListeners()) > 1 {
		return nil, fmt.Errorf("static_resources.listeners: %w: more than one listener", ErrUnsupported)
	}
	cfg := &config{clusters: map[string]*clusterConfig{}}
	var errs []error
	for _, c := range sr.GetClusters() {
		cc, err := buildCluster(c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := cfg.clusters[cc.name]; dup {
			errs = append(errs, fmt.Errorf("cluster %q defined twice", cc.name))
			continue
		}
		cfg.clusters[cc.name] = cc
	}
	if err := cfg.buildListener(sr.GetListeners()[0]); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := cfg.checkReferences(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (cfg *config) buildListener(l *listenerv3.Listener) error {
	where := fmt.Sprintf("listener %q", l.GetName())
	if err := onlyFields(where, l, "name", "address", "filter_chains", "per_connection_buffer_limit_bytes", "stat_prefix", "traffic_direction"); err != nil {
		return err
	}
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return fmt.Errorf("%s: address: %w: only socket_address", where, ErrUnsupported)
	}
	cfg.listenAddr = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	if len(l.GetFilterChains()) != 1 {
		return fmt.Errorf("%s: %w: exactly one filter chain is supported", where, ErrUnsupported)
	}
	fc := l.GetFilterChains()[0]
	if err := onlyFields(where+" filter_chains[0]", fc, "filters", "name"); err != nil {
		return err
	}
	if len(fc.GetFilters()) != 1 || fc.GetFilters()[0].GetTypedConfig().GetTypeUrl() != typeHCM {
		return fmt.Errorf("%s: %w: the filter chain must hold exactly one http_connection_manager", where, ErrUnsupported)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		return fmt.Errorf("%s: decode http_connection_manager: %w", where, err)
	}
	h, err := buildHCM(hcm)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	h.bufferLimit = defaultBufferLimit
	if v := l.GetPerConnectionBufferLimitBytes(); v != nil {
		h.bufferLimit = uint64(v.GetValue())
	}
	cfg.hcm = h
	return nil
}

func buildHCM(m *hcmv3.HttpConnectionManager) (*hcmConfig, error) {
	if err := onlyFields("http_connection_manager", m,
		"stat_prefix", "codec_type", "route_config", "http_filters", "generate_request_id",
		"preserve_external_request_id", "use_remote_address", "always_set_request_id_in_response",
		"access_log", "stream_idle_timeout", "request_timeout", "request_headers_timeout",
		"drain_timeout", "common_http_protocol_options", "http_protocol_options", "http2_protocol_options",
		"max_request_headers_kb", "normalize_path", "merge_slashes", "xff_num_trusted_hops", "skip_xff_append",
		"via", "server_name", "server_header_transformation", "path_with_escaped_slashes_action",
		"internal_address_config", "tracing"); err != nil {
		return nil, err
	}
	h := &hcmConfig{
		generateRequestID:            m.GetGenerateRequestId() == nil || m.GetGenerateRequestId().GetValue(),
		preserveExternalRequestID:    m.GetPreserveExternalRequestId(),
		useRemoteAddress:             m.GetUseRemoteAddress().GetValue(),
		alwaysSetRequestIDInResponse: m.GetAlwaysSetRequestIdInResponse(),
		allowHTTP2:                   m.GetCodecType() != hcmv3.HttpConnectionManager_HTTP1,
		xffNumTrustedHops:            m.GetXffNumTrustedHops(),
		skipXffAppend:                m.GetSkipXffAppend(),
		via:                          m.GetVia(),
	}
	var err error
	if h.internal, err = buildInternalAddresses(m.GetInternalAddressConfig()); err != nil {
		return nil, err
	}
	if m.GetRouteConfig() == nil {
		return nil, fmt.Errorf("http_connection_manager: %w: only an inline route_config (no rds or scoped_routes)", ErrUnsupported)
	}
	rc, err := buildRouteConfig(m.GetRouteConfig())
	if err != nil {
		return nil, err
	}
	h.routes = rc
	filters := m.GetHttpFilters()
	if len(filters) == 0 || filters[len(filters)-1].GetTypedConfig().GetTypeUrl() != typeRouter {
		return nil, errors.New("http_connection_manager.http_filters: the chain must end with the router filter (envoy.filters.http.router)")
	}
	for i, f := range filters[:len(filters)-1] {
		df, err := buildDownstreamFilter(fmt.Sprintf("http_connection_manager.http_filters[%d]", i), f)
		if err != nil {
			return nil, err
		}
		h.downstream = append(h.downstream, df)
	}
	router := &routerv3.Router{}
	if err := filters[len(filters)-1].GetTypedConfig().UnmarshalTo(router); err != nil {
		return nil, fmt.Errorf("decode router: %w", err)
	}
	if err := onlyFields("router", router, "upstream_http_filters", "suppress_envoy_headers", "start_child_span", "dynamic_stats", "upstream_log"); err != nil {
		return nil, err
	}
	h.suppressEnvoyHeaders = router.GetSuppressEnvoyHeaders()
	if h.routerFilters, err = buildUpstreamFilters("router.upstream_http_filters", router.GetUpstreamHttpFilters()); err != nil {
		return nil, err
	}
	return h, nil
}

// checkReferences fails on a route or ext_proc filter naming a cluster that does not
// exist, as Envoy does for static route configurations (validate_clusters).
func (cfg *config) checkReferences() error {
	var errs []error
	checkFilters := func(where string, fs []*filterConfig) {
		for _, f := range fs {
			c, ok := cfg.clusters[f.extProc.cluster]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: ext_proc filter %q names unknown cluster %q", where, f.name, f.extProc.cluster))
				continue
			}
			if !c.http2 {
				errs = append(errs, fmt.Errorf("%s: ext_proc cluster %q must speak HTTP/2 for gRPC (typed_extension_protocol_options %s explicit_http_config.http2_protocol_options)", where, c.name, keyHTTPProtoOpt))
			}
		}
	}
	checkFilters("router", cfg.hcm.routerFilters)
	for _, c := range cfg.clusters {
		checkFilters("cluster "+c.name, c.filters)
	}
	for _, vh := range cfg.hcm.routes.vhosts {
		for _, r := range vh.routes {
			if _, ok := cfg.clusters[r.cluster]; !ok {
				errs = append(errs, fmt.Errorf("virtual host %q route %q: unknown cluster %q", vh.name, r.name, r.cluster))
			}
		}
	}
	return errors.Join(errs...)
}

// durationOr converts a proto Duration, or returns def when it is unset.
func durationOr(d *durationpb.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.AsDuration()
}

// unpack decodes a typed config into m after checking its type URL.
func unpack(where string, a *anypb.Any, typeURL string, m proto.Message) error {
	if a.GetTypeUrl() != typeURL {
		return fmt.Errorf("%s: typed config %q: %w (want %s)", where, a.GetTypeUrl(), ErrUnsupported, typeURL)
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("%s: decode %s: %w", where, typeURL, err)
	}
	return nil
}
