package standin

import (
	"errors"
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

type routeConfig struct {
	vhosts         []*virtualHost
	headers        headerOps
	filterDisabled map[string]bool
}

type virtualHost struct {
	name                          string
	domains                       []string
	includeAttemptCount           bool
	includeAttemptCountInResponse bool
	routes                        []*route
	headers                       headerOps
	bodyLimit                     bufferLimits
	retry                         *retryPolicy
	filterDisabled                map[string]bool
	rc                            *routeConfig
}

// bufferLimits are the request_body_buffer_limit and the legacy
// per_request_buffer_limit_bytes of a route or virtual host (nil: unset).
type bufferLimits struct {
	current *uint64
	legacy  *uint64
}

type route struct {
	name            string
	prefix          string
	path            string
	caseSensitive   bool
	cluster         string
	prefixRewrite   *string
	hostRewrite     string
	autoHostRewrite bool
	timeout         time.Duration // 0 disables the route timeout
	retry           *retryPolicy
	headers         headerOps
	bodyLimit       bufferLimits
	filterDisabled  map[string]bool
}

// headerOps are the literal request/response header additions and removals of a
// route, virtual host or route configuration.
type headerOps struct {
	reqAdd     []headerAdd
	reqRemove  []string
	respAdd    []headerAdd
	respRemove []string
}

type headerAdd struct {
	key       string
	value     string
	format    *headerFormat // nil: value is literal
	action    corev3.HeaderValueOption_HeaderAppendAction
	keepEmpty bool
}

func buildRouteConfig(rc *routev3.RouteConfiguration) (*routeConfig, error) {
	if err := onlyFields("route_config", rc, "name", "virtual_hosts", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove", "validate_clusters", "typed_per_filter_config"); err != nil {
		return nil, err
	}
	out := &routeConfig{}
	var err error
	if out.filterDisabled, err = buildPerFilterConfig("route_config", rc.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	if out.headers, err = buildHeaderOps("route_config", rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	var errs []error
	for _, vh := range rc.GetVirtualHosts() {
		v, err := buildVirtualHost(vh)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		v.rc = out
		out.vhosts = append(out.vhosts, v)
	}
	return out, errors.Join(errs...)
}

func buildVirtualHost(vh *routev3.VirtualHost) (*virtualHost, error) {
	where := fmt.Sprintf("virtual host %q", vh.GetName())
	if err := onlyFields(where, vh, "name", "domains", "routes", "include_request_attempt_count", "include_attempt_count_in_response",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
		"per_request_buffer_limit_bytes", "request_body_buffer_limit", "retry_policy", "typed_per_filter_config"); err != nil {
		return nil, err
	}
	v := &virtualHost{
		name:                          vh.GetName(),
		domains:                       vh.GetDomains(),
		includeAttemptCount:           vh.GetIncludeRequestAttemptCount(),
		includeAttemptCountInResponse: vh.GetIncludeAttemptCountInResponse(),
	}
	var err error
	if v.filterDisabled, err = buildPerFilterConfig(where, vh.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	if v.headers, err = buildHeaderOps(where, vh.GetRequestHeadersToAdd(), vh.GetRequestHeadersToRemove(), vh.GetResponseHeadersToAdd(), vh.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	v.bodyLimit = bufferLimitsOf(vh.GetRequestBodyBufferLimit().GetValue(), vh.GetRequestBodyBufferLimit() != nil, vh.GetPerRequestBufferLimitBytes().GetValue(), vh.GetPerRequestBufferLimitBytes() != nil)
	if vh.GetRetryPolicy() != nil {
		if v.retry, err = buildRetryPolicy(where+" retry_policy", vh.GetRetryPolicy()); err != nil {
			return nil, err
		}
	}
	var errs []error
	for i, r := range vh.GetRoutes() {
		rr, err := buildRoute(fmt.Sprintf("%s route[%d] %q", where, i, r.GetName()), r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		v.routes = append(v.routes, rr)
	}
	return v, errors.Join(errs...)
}

func bufferLimitsOf(v64 uint64, has64 bool, v32 uint32, has32 bool) bufferLimits {
	var b bufferLimits
	if has64 {
		b.current = &v64
	}
	if has32 {
		v := uint64(v32)
		b.legacy = &v
	}
	return b
}

// routeBodyLimit is getRequestBodyBufferLimit (source/common/router/config_impl.cc):
// the route's request_body_buffer_limit, the virtual host's, the route's
// per_request_buffer_limit_bytes, the virtual host's; nil when none is set.
func routeBodyLimit(vh *virtualHost, rt *route) *uint64 {
	for _, v := range []*uint64{rt.bodyLimit.current, vh.bodyLimit.current, rt.bodyLimit.legacy, vh.bodyLimit.legacy} {
		if v != nil {
			return v
		}
	}
	return nil
}

func buildRoute(where string, r *routev3.Route) (*route, error) {
	if err := onlyFields(where, r, "name", "match", "route", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove", "per_request_buffer_limit_bytes", "request_body_buffer_limit", "decorator",
		"typed_per_filter_config"); err != nil {
		return nil, err
	}
	out := &route{name: r.GetName(), caseSensitive: true}
	var perr error
	if out.filterDisabled, perr = buildPerFilterConfig(where, r.GetTypedPerFilterConfig()); perr != nil {
		return nil, perr
	}
	m := r.GetMatch()
	if err := onlyFields(where+" match", m, "prefix", "path", "case_sensitive"); err != nil {
		return nil, err
	}
	switch m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.prefix = m.GetPrefix()
	case *routev3.RouteMatch_Path:
		out.path = m.GetPath()
	default:
		return nil, fmt.Errorf("%s match: %w: only prefix or path", where, ErrUnsupported)
	}
	if m.GetCaseSensitive() != nil {
		out.caseSensitive = m.GetCaseSensitive().GetValue()
	}
	a := r.GetRoute()
	if a == nil {
		return nil, fmt.Errorf("%s: %w: only route actions (no redirect or direct_response)", where, ErrUnsupported)
	}
	if err := onlyFields(where+" route", a, "cluster", "prefix_rewrite", "timeout", "retry_policy", "host_rewrite_literal", "auto_host_rewrite"); err != nil {
		return nil, err
	}
	out.cluster = a.GetCluster()
	if out.cluster == "" {
		return nil, fmt.Errorf("%s route: %w: only a fixed cluster", where, ErrUnsupported)
	}
	if hasField(a, "prefix_rewrite") {
		p := a.GetPrefixRewrite()
		out.prefixRewrite = &p
	}
	out.hostRewrite = a.GetHostRewriteLiteral()
	out.autoHostRewrite = a.GetAutoHostRewrite().GetValue()
	out.timeout = durationOr(a.GetTimeout(), defaultRouteTimeout)
	var err error
	if a.GetRetryPolicy() != nil {
		if out.retry, err = buildRetryPolicy(where+" retry_policy", a.GetRetryPolicy()); err != nil {
			return nil, err
		}
	}
	if out.headers, err = buildHeaderOps(where, r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(), r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	out.bodyLimit = bufferLimitsOf(r.GetRequestBodyBufferLimit().GetValue(), r.GetRequestBodyBufferLimit() != nil, r.GetPerRequestBufferLimitBytes().GetValue(), r.GetPerRequestBufferLimitBytes() != nil)
	return out, nil
}

// buildPerFilterConfig reads typed_per_filter_config. The stand-in runs the generic
// envoy.config.route.v3.FilterConfig with `disabled` (and is_optional) only: the filter
// of that name, downstream or upstream, is left out of the request's chains
// (FilterChainUtility::createFilterChainForFactories asks the route's filterDisabled,
// and the upstream filter manager shares the downstream route). Filter-specific
// per-route configs are refused.
func buildPerFilterConfig(where string, m map[string]*anypb.Any) (map[string]bool, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := map[string]bool{}
	for name, a := range m {
		w := fmt.Sprintf("%s typed_per_filter_config[%q]", where, name)
		fc := &routev3.FilterConfig{}
		if err := unpack(w, a, typeRouteFilterConf, fc); err != nil {
			return nil, err
		}
		if err := onlyFields(w, fc, "disabled", "is_optional"); err != nil {
			return nil, err
		}
		out[name] = fc.GetDisabled()
	}
	return out, nil
}

// filterDisabled is RouteEntryImplBase::filterDisabled (config_impl.cc): the route's
// setting, else the virtual host's, else the route configuration's; ok is false when
// none names the filter.
func filterDisabled(vh *virtualHost, rt *route, name string) (disabled, ok bool) {
	if rt != nil {
		if d, ok := rt.filterDisabled[name]; ok {
			return d, true
		}
	}
	if vh != nil {
		if d, ok := vh.filterDisabled[name]; ok {
			return d, true
		}
		if vh.rc != nil {
			if d, ok := vh.rc.filterDisabled[name]; ok {
				return d, true
			}
		}
	}
	return false, false
}

func buildHeaderOps(where string, reqAdd []*corev3.HeaderValueOption, reqRemove []string, respAdd []*corev3.HeaderValueOption, respRemove []string) (headerOps, error) {
	var ops headerOps
	var err error
	if ops.reqAdd, err = buildHeaderAdds(where+" request_headers_to_add", reqAdd, true); err != nil {
		return ops, err
	}
	if ops.respAdd, err = buildHeaderAdds(where+" response_headers_to_add", respAdd, true); err != nil {
		return ops, err
	}
	for _, h := range reqRemove {
		ops.reqRemove = append(ops.reqRemove, strings.ToLower(h))
	}
	for _, h := range respRemove {
		ops.respRemove = append(ops.respRemove, strings.ToLower(h))
	}
	return ops, nil
}

// buildHeaderAdds reads HeaderValueOptions of route configuration. appendDefault is
// what an unset `append` means there (true for routes, as HeaderParser reads it).
func buildHeaderAdds(where string, opts []*corev3.HeaderValueOption, appendDefault bool) ([]headerAdd, error) {
	var out []headerAdd
	for _, o := range opts {
		if err := onlyFields(where, o, "header", "append", "append_action", "keep_empty_value"); err != nil {
			return nil, err
		}
		v := o.GetHeader().GetValue()
		if len(o.GetHeader().GetRawValue()) > 0 {
			v = string(o.GetHeader().GetRawValue())
		}
		format, err := parseHeaderFormat(v)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", where, o.GetHeader().GetKey(), err)
		}
		action := o.GetAppendAction()
		if o.GetAppend() != nil {
			if o.GetAppend().GetValue() {
				action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			} else {
				action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
			}
		} else if !appendDefault && !hasField(o, "append_action") {
			action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		}
		out = append(out, headerAdd{key: strings.ToLower(o.GetHeader().GetKey()), value: v, format: format, action: action, keepEmpty: o.GetKeepEmptyValue()})
	}
	return out, nil
}

// applyHeaderAdds performs the additions of adds on h, as
// HeaderParser::evaluateHeaders: values are formatted first (md is the stream's
// dynamic metadata), empty values are skipped unless keep_empty_value.
func applyHeaderAdds(adds []headerAdd, h *headerMap, md *dynamicMetadata) {
	for _, a := range adds {
		value := a.value
		if a.format != nil {
			value = a.format.format(md)
		}
		if value == "" && !a.keepEmpty {
			continue
		}
		a.value = value
		switch a.action {
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			if !h.has(a.key) {
				h.add(a.key, a.value)
			}
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			if h.has(a.key) {
				h.set(a.key, a.value)
			}
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			h.set(a.key, a.value)
		default:
			h.add(a.key, a.value)
		}
	}
}

// matchVirtualHost picks the virtual host for an authority the way Envoy ranks
// domains: exact, then the longest suffix wildcard ("*.example.com"), then the
// longest prefix wildcard ("api.*"), then "*". Matching is case-insensitive and, as in
// Envoy, includes the port when the client sent one.
func (rc *routeConfig) matchVirtualHost(authority string) *virtualHost {
	host := strings.ToLower(authority)
	var best *virtualHost
	bestRank, bestLen := 0, -1
	for _, vh := range rc.vhosts {
		for _, d := range vh.domains {
			d = strings.ToLower(d)
			rank, n := 0, len(d)
			switch {
			case d == host:
				rank = 4
			case d == "*":
				rank = 1
			case strings.HasPrefix(d, "*") && strings.HasSuffix(host, d[1:]) && len(host) > len(d)-1:
				rank = 3
			case strings.HasSuffix(d, "*") && strings.HasPrefix(host, d[:len(d)-1]) && len(host) > len(d)-1:
				rank = 2
			}
			if rank > bestRank || (rank == bestRank && rank > 0 && n > bestLen) {
				best, bestRank, bestLen = vh, rank, n
			}
		}
	}
	return best
}

// matchRoute returns the first route whose path matcher accepts path (query string
// excluded), Envoy's first-match order.
func (vh *virtualHost) matchRoute(path string) *route {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	for _, r := range vh.routes {
		p := path
		want := r.prefix
		if r.path != "" {
			want = r.path
		}
		if !r.caseSensitive {
			p, want = strings.ToLower(p), strings.ToLower(want)
		}
		if r.path != "" && p == want {
			return r
		}
		if r.path == "" && strings.HasPrefix(p, want) {
			return r
		}
	}
	return nil
}
