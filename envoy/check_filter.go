package envoy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// checkFilter checks an envoy-keypool filter and returns the pool it names.
func (k *keypoolChecker) checkFilter(f filterEntry) *config.Pool {
	ep, at := f.extProc, f.path.f("typed_config")
	var pool *config.Pool
	var names []string
	for _, hv := range ep.GetGrpcService().GetInitialMetadata() {
		if strings.EqualFold(hv.GetKey(), k.cfg.Envoy.PoolMetadataKey) {
			names = append(names, headerValue(hv))
		}
	}
	if len(names) == 1 {
		pool, _ = k.cfg.Pool(names[0])
	}
	if !k.once(f.path) {
		return pool
	}
	md := at.f("grpc_service.initial_metadata")
	switch {
	case len(names) != 1:
		k.add(md.problem("%d %q entries, want 1 naming the pool", len(names), k.cfg.Envoy.PoolMetadataKey))
	case pool == nil:
		k.add(md.problem("names pool %q, which the envoy-keypool config lacks", names[0]))
	}
	pm, pmPath := ep.GetProcessingMode(), at.f("processing_mode")
	for _, m := range []struct {
		field string
		got   fmt.Stringer
		want  any
		cost  string
	}{
		{"request_header_mode", pm.GetRequestHeaderMode(), "SEND", "no key would be injected"},
		{"response_header_mode", pm.GetResponseHeaderMode(), "SEND", "key failures would never fail over"},
		{"request_body_mode", pm.GetRequestBodyMode(), "NONE", "every request body would wait for envoy-keypool"},
		{"response_body_mode", pm.GetResponseBodyMode(), "NONE", "streamed completions would wait for envoy-keypool"},
	} {
		if m.got.String() != m.want {
			k.add(pmPath.f(m.field).problem("%s, want %s: %s", m.got, m.want, m.cost))
		}
	}
	if ep.GetFailureModeAllow() {
		k.add(at.f("failure_mode_allow").problem("true: when envoy-keypool cannot be reached requests go to the provider with no pool key, and their key failures reach the client"))
	}
	timeout := messageTimeout
	if ep.GetMessageTimeout() != nil {
		timeout = ep.GetMessageTimeout().AsDuration()
	}
	if r := k.cfg.State.Redis; r != nil && r.Timeout.Std() >= timeout {
		k.add(at.f("message_timeout").problem("%s is not above envoy-keypool's state.redis.timeout %s: a slow Redis call would fail the attempt with 504 instead of falling back to local state", timeout, r.Timeout.Std()))
	}
	// The error body of a failure (quota or rate limit, Gemini's bad key): without the
	// override Envoy ignores envoy-keypool's request for it (ext_proc.cc
	// onReceiveMessage) and the failure is decided on headers alone.
	switch {
	case !k.cfg.Envoy.ClassifiesErrorBodies():
	case !ep.GetAllowModeOverride():
		k.add(at.f("allow_mode_override").problem("false, but envoy.classify_error_bodies is on: Envoy ignores envoy-keypool's request for a failure's error body, and that failure reaches the client without failover (set envoy.classify_error_bodies: false to decide on headers alone)"))
	case ep.GetSendBodyWithoutWaitingForHeaderResponse():
		k.add(at.f("send_body_without_waiting_for_header_response").problem("true: Envoy then ignores mode_override, and envoy-keypool cannot read a failure's error body"))
	case len(ep.GetAllowedOverrideModes()) > 0 && !slices.ContainsFunc(ep.GetAllowedOverrideModes(), sameModeAs(FailureBodyMode())):
		k.add(at.f("allowed_override_modes").problem("lacks %s: Envoy refuses envoy-keypool's request for a failure's error body", modeString(FailureBodyMode())))
	}
	if cluster := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); cluster != "" {
		u := k.keypool[cluster]
		if u == nil {
			u = &keypoolUse{minMessageTimeout: timeout}
			k.keypool[cluster] = u
		}
		u.minMessageTimeout = min(u.minMessageTimeout, timeout)
		if k.checkStreamRetry(at.f("grpc_service"), ep.GetGrpcService(), timeout) {
			u.streamRetries = true
		}
	} else if ep.GetGrpcService().GetGoogleGrpc() != nil {
		k.add(at.f("grpc_service.google_grpc").problem("Google gRPC clients ignore grpc_service.retry_policy (grpc_service.proto): a stream refused by a stopping replica fails its request; use envoy_grpc"))
	}
	return pool
}

// checkStreamRetry checks that a stream that cannot be opened on one replica is opened
// on another, in time. It reports whether the policy retries at all.
func (k *keypoolChecker) checkStreamRetry(at fieldPath, gs *corev3.GrpcService, timeout time.Duration) bool {
	rp := gs.GetRetryPolicy()
	if rp == nil {
		k.add(at.f("retry_policy").problem("unset: a stream refused by a replica that is stopping or gone fails its request with 500 instead of moving to another replica"))
		return false
	}
	on := retryOnTokens(rp.GetRetryOn())
	if !slices.Contains(on, "reset") && !(slices.Contains(on, "connect-failure") && slices.Contains(on, "refused-stream")) {
		k.add(at.f("retry_policy.retry_on").problem("%q retries neither a refused connection (connect-failure) and a refused stream (refused-stream) nor any reset before an answer (reset)", rp.GetRetryOn()))
	}
	// The core RetryPolicy's back-off defaults to 1 s (common/http/utility.cc
	// convertCoreToRouteRetryPolicy), and message_timeout covers the retries.
	base := time.Second
	if b := rp.GetRetryBackOff(); b != nil {
		base = b.GetBaseInterval().AsDuration()
	}
	if base*2 >= timeout {
		k.add(at.f("retry_policy.retry_back_off").problem("base_interval %s (1s when unset) does not fit twice in message_timeout %s, which the retries must finish inside", base, timeout))
	}
	return true
}

// checkPerRoute: a route, its virtual host or the route table may carry configuration
// for a filter by its name, and Envoy applies it to upstream filters too
// (common/http/filter_manager.cc perFilterConfigs; ext_proc.cc mergePerRouteConfig):
// an ExtProcPerRoute under envoy-keypool's filter name can switch it off or change
// what it sees, and a FilterConfig can disable it.
func (k *keypoolChecker) checkPerRoute(h *hcmEntry, r routeEntry, name string) {
	for _, at := range []struct {
		path    fieldPath
		configs map[string]*anypb.Any
	}{
		{r.path.f("typed_per_filter_config"), r.route.GetTypedPerFilterConfig()},
		{r.vhostPath.f("typed_per_filter_config"), r.vhost.GetTypedPerFilterConfig()},
		{h.tablePath.f("typed_per_filter_config"), h.table.GetTypedPerFilterConfig()},
	} {
		a, ok := at.configs[name]
		if !ok || !k.once(at.path.k(name)) {
			continue
		}
		p := at.path.k(name)
		switch a.GetTypeUrl() {
		case typeFilterConfig:
			fc := &routev3.FilterConfig{}
			if a.UnmarshalTo(fc) == nil && fc.GetDisabled() {
				k.add(p.problem("disables envoy-keypool's filter %q on this route: its requests leave with no pool key", name))
			}
		case typeExtProcPerRoute:
			pr := &extprocv3.ExtProcPerRoute{}
			if a.UnmarshalTo(pr) != nil {
				continue
			}
			if pr.GetDisabled() {
				k.add(p.problem("disabled: true switches envoy-keypool's filter %q off on this route: its requests leave with no pool key (a filter of another name keeps its own per-route configuration)", name))
			}
			o := pr.GetOverrides()
			if o.GetProcessingMode() != nil || o.GetGrpcService() != nil || len(o.GetGrpcInitialMetadata()) > 0 || o.GetFailureModeAllow() != nil {
				k.add(p.problem("overrides envoy-keypool's filter %q on this route (processing mode, gRPC service, initial metadata or failure_mode_allow): the checks of the filter do not hold for it", name))
			}
		}
	}
}

// checkRequestID: envoy-keypool keeps a request's tried keys under its x-request-id,
// which must be generated by Envoy, not chosen by a client
// (conn_manager_utility.cc mutateRequestHeaders).
func (k *keypoolChecker) checkRequestID(h *hcmEntry) {
	if g := h.hcm.GetGenerateRequestId(); g != nil && !g.GetValue() {
		k.add(h.path.f("generate_request_id").problem("false: envoy-keypool needs x-request-id to tell one request's attempts from another's"))
	}
	if !h.hcm.GetUseRemoteAddress().GetValue() {
		k.add(h.path.f("use_remote_address").problem("false: Envoy keeps the x-request-id a client sends, and two requests with the same id share their tried keys"))
	}
	if h.hcm.GetPreserveExternalRequestId() {
		k.add(h.path.f("preserve_external_request_id").problem("true: Envoy keeps the x-request-id a client sends, and two requests with the same id share their tried keys"))
	}
	// Set, even empty, internal_address_config trusts clients: an empty cidr_ranges
	// means every RFC 1918, loopback and unique-local address
	// (http_connection_manager/config.h InternalAddressConfig); unset, none
	// (conn_manager_config.h DefaultInternalAddressConfig).
	if iac := h.hcm.GetInternalAddressConfig(); iac != nil {
		at := h.path.f("internal_address_config")
		switch {
		case len(iac.GetCidrRanges()) > 0:
			k.add(at.f("cidr_ranges").problem("clients from these ranges are internal and keep the x-request-id they send; two requests with the same id share their tried keys"))
		case !iac.GetUnixSockets():
			k.add(at.problem("set without cidr_ranges: every client from a private, loopback or unique-local address is internal and keeps the x-request-id it sends"))
		}
		if iac.GetUnixSockets() {
			k.add(at.f("unix_sockets").problem("true: clients over Unix sockets are internal and keep the x-request-id they send"))
		}
	}
}

// checkModelFilter: a json_to_metadata filter that fills envoy-keypool's metadata
// buffers the whole body, and past the buffer limit Envoy answers 413
// (filter_manager.cc requestDataTooLarge) instead of proxying the request. Wrapped in
// a matcher (ExtensionWithMatcher) it can be skipped for large bodies, as the
// generated configuration does.
func (k *keypoolChecker) checkModelFilter(h *hcmEntry) {
	for _, f := range h.filters {
		if f.filter.GetTypedConfig().GetTypeUrl() == typeJSONToMeta {
			k.add(f.path.f("typed_config").problem("json_to_metadata not wrapped in an ExtensionWithMatcher that skips large bodies: a request body past the buffer limit is answered 413"))
		}
	}
}
