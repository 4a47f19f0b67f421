package envoy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// CheckKeypool reports where bs does not run envoy-keypool as cfg expects it; the
// error joins one *Problem per finding, each naming its field. It follows every route
// to a cluster whose upstream filters hold an envoy-keypool ext_proc filter (one
// naming a pool through cfg's pool_metadata_key initial metadata) and checks, each
// where Envoy reads it:
//
//   - the filter: request and response headers SEND, bodies NONE, failure_mode_allow
//     false, a message_timeout above envoy-keypool's Redis timeout, the pool named once
//     and known to cfg, mode override allowed for the failure body mode, and a stream
//     retry policy that can move a stream to another replica within message_timeout;
//   - the retry policy in force (the cluster's, else the route's, else the virtual
//     host's): the marker retried, num_retries at least the pool's size, and no
//     condition that retries what the provider may have run and billed (5xx, resets
//     after the request left, other statuses), nor a condition Envoy does not know
//     (Envoy ignores those silently: retry_state_impl.cc parseRetryOn);
//   - the route and virtual host: the body buffered for replay, x-envoy-attempt-count
//     sent, the marker removed from responses;
//   - the provider cluster: circuit breakers that let every request in flight retry at
//     once, an idle timeout below the provider's keep-alive, TLS with the provider's
//     name checked for an https upstream;
//   - the connection manager: x-request-id Envoy's own for every client, envoy-keypool
//     not in the downstream chain, json_to_metadata not able to answer 413;
//   - the envoy-keypool cluster: health checked, the replicas cfg names, HTTP/2
//     keepalive, a connect timeout inside message_timeout, room for one stream per
//     provider request in flight and for all of them to retry, TLS as cfg says;
//
// and that every pool of cfg has a route, and that no cluster reaches a pool's
// provider without envoy-keypool.
func CheckKeypool(bs *bootstrapv3.Bootstrap, cfg *config.Config) error {
	return (&EnvoyConfig{Bootstrap: bs}).CheckKeypool(cfg)
}

// CheckKeypool is the package's CheckKeypool for c.
func (c *EnvoyConfig) CheckKeypool(cfg *config.Config) error {
	k := &keypoolChecker{
		ix:        index(c.Bootstrap, c.Routes),
		cfg:       cfg,
		done:      map[string]bool{},
		routed:    map[string]bool{},
		keypool:   map[string]*keypoolUse{},
		withProcs: map[string]bool{},
	}
	for _, h := range k.ix.hcms {
		k.checkHCM(h)
	}
	k.checkKeypoolClusters()
	k.checkUncovered()
	return errors.Join(append(k.ix.problems, k.errs...)...)
}

type keypoolChecker struct {
	ix   *bootstrapIndex
	cfg  *config.Config
	errs []error
	// done holds the paths already checked (a filter, cluster or virtual host reached
	// by several routes is checked once).
	done map[string]bool
	// routed holds the pools some route reaches through their filter.
	routed map[string]bool
	// keypool holds, per envoy-keypool cluster, what its checks need.
	keypool map[string]*keypoolUse
	// withProcs holds the provider clusters reached with an envoy-keypool filter.
	withProcs map[string]bool
	// providerRequests sums the max_requests of those provider clusters.
	providerRequests int
	unresolvedRDS    int
}

// keypoolUse is what the filters naming an envoy-keypool cluster ask of it.
type keypoolUse struct {
	minMessageTimeout time.Duration
	streamRetries     bool
}

func (k *keypoolChecker) add(p *Problem) { k.errs = append(k.errs, p) }

func (k *keypoolChecker) once(p fieldPath) bool {
	if k.done[p.String()] {
		return false
	}
	k.done[p.String()] = true
	return true
}

// isKeypool reports whether f is an envoy-keypool ext_proc filter: one naming a pool
// through the pool metadata key. Other ext_proc filters (Envoy AI Gateway's, say) may
// share the chain.
func (k *keypoolChecker) isKeypool(f filterEntry) bool {
	if f.extProc == nil {
		return false
	}
	for _, hv := range f.extProc.GetGrpcService().GetInitialMetadata() {
		if strings.EqualFold(hv.GetKey(), k.cfg.Envoy.PoolMetadataKey) {
			return true
		}
	}
	return false
}

func (k *keypoolChecker) checkHCM(h *hcmEntry) {
	for _, f := range h.filters {
		if k.isKeypool(f) {
			k.add(f.path.problem("envoy-keypool's ext_proc filter in the downstream chain sees one stream per request, not one per attempt: key failover cannot work; put it in the provider cluster's upstream filters (%s http_filters)", keyHTTPOptions))
		}
	}
	if h.table == nil {
		if h.hcm.GetRds() != nil {
			k.unresolvedRDS++
		}
		return
	}
	reaches := false
	for _, r := range h.routes() {
		for _, name := range routeClusters(r.route) {
			cl, ok := k.ix.cluster(name)
			if !ok {
				continue // CheckLoad's
			}
			chain := h.upstream
			if cl.options != nil && cl.options.GetHttpFilters() != nil {
				chain = cl.filters
			}
			var procs []filterEntry
			for _, f := range chain {
				if k.isKeypool(f) {
					procs = append(procs, f)
				}
			}
			if len(procs) == 0 {
				continue
			}
			reaches = true
			k.withProcs[name] = true
			if len(procs) > 1 {
				if k.once(procs[1].path) {
					k.add(procs[1].path.problem("a second envoy-keypool ext_proc filter in the chain (the first is %s): each would pick and inject a key", procs[0].path.field))
				}
				continue
			}
			pool := k.checkFilter(procs[0])
			if pool == nil {
				continue
			}
			k.routed[pool.Name] = true
			k.checkPerRoute(h, r, procs[0].filter.GetName())
			k.checkRetry(r, cl, pool)
			k.checkRoute(h, r)
			k.checkProviderCluster(cl, pool)
		}
	}
	if reaches && k.once(h.path) {
		k.checkRequestID(h)
		k.checkModelFilter(h)
	}
}

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

// checkRetry checks the retry policy Envoy applies to r's requests to cluster cl: the
// cluster's replaces the route's, which replaces the virtual host's (no merging;
// http_protocol_options.proto and route_components.proto).
func (k *keypoolChecker) checkRetry(r routeEntry, cl *clusterEntry, pool *config.Pool) {
	rp, at := cl.options.GetRetryPolicy(), cl.optPath.f("retry_policy")
	if rp == nil {
		rp, at = r.route.GetRoute().GetRetryPolicy(), r.path.f("route.retry_policy")
	}
	if rp == nil {
		rp, at = r.vhost.GetRetryPolicy(), r.vhostPath.f("retry_policy")
	}
	if rp == nil {
		if k.once(r.path.f("retry_policy")) {
			k.add(r.path.problem("no retry policy on cluster %q, the route or its virtual host: key failures are never retried", cl.cluster.GetName()))
		}
		return
	}
	if !k.once(at) {
		return
	}
	on := retryOnTokens(rp.GetRetryOn())
	if !slices.Contains(on, "retriable-headers") {
		k.add(at.f("retry_on").problem("%q lacks retriable-headers: envoy-keypool's marker is never retried", rp.GetRetryOn()))
	}
	for _, tok := range on {
		if why, bad := billsTwice[tok]; bad {
			k.add(at.f("retry_on").problem("%q %s: an LLM call is not idempotent and may be billed twice", tok, why))
		} else if !slices.Contains(knownRetryOn, tok) {
			k.add(at.f("retry_on").problem("%q is no retry condition Envoy knows; Envoy ignores it silently (retry_state_impl.cc parseRetryOn)", tok))
		}
	}
	if slices.Contains(on, "retriable-status-codes") {
		for i, code := range rp.GetRetriableStatusCodes() {
			if !slices.Contains([]uint32{401, 403, 429}, code) {
				k.add(at.f("retriable_status_codes").i(i).problem("%d: the provider may have run the request before answering it, so a retry may bill it twice", code))
			}
		}
	}
	found := false
	for _, m := range rp.GetRetriableHeaders() {
		if strings.EqualFold(m.GetName(), k.cfg.Envoy.RetryMarkerHeader) && m.GetPresentMatch() && !m.GetInvertMatch() {
			found = true
		}
	}
	if !found {
		k.add(at.f("retriable_headers").problem("lacks {name: %s, present_match: true}: envoy-keypool's marker is never retried", k.cfg.Envoy.RetryMarkerHeader))
	}
	retries := uint32(1) // RetryPolicy.num_retries default
	if rp.GetNumRetries() != nil {
		retries = rp.GetNumRetries().GetValue()
	}
	if int(retries) < len(pool.Keys) {
		k.add(at.f("num_retries").problem("%d is below the %d keys of pool %q: the last keys are never tried and the client gets a key failure", retries, len(pool.Keys), pool.Name))
	}
}

// billsTwice are the retry_on conditions that retry a request the provider may have
// run, with what they retry.
var billsTwice = map[string]string{
	"5xx":                        "retries 5xx answers, which the provider may give after running the request",
	"gateway-error":              "retries 502/503/504 answers, which the provider may give after running the request",
	"reset":                      "retries resets after the request left, which the provider may have run",
	"retriable-4xx":              "retries 409 answers",
	"http3-post-connect-failure": "retries requests already sent over HTTP/3",
	"cancelled":                  "retries gRPC statuses, which come after the request was sent",
	"deadline-exceeded":          "retries gRPC statuses, which come after the request was sent",
	"internal":                   "retries gRPC statuses, which come after the request was sent",
	"resource-exhausted":         "retries gRPC statuses, which come after the request was sent",
	"unavailable":                "retries gRPC statuses, which come after the request was sent",
}

// knownRetryOn are the other retry_on conditions of Envoy 1.37
// (router/retry_state_impl.cc parseRetryOn, parseRetryGrpcOn), which retry only
// what the provider never ran or refused before running it.
var knownRetryOn = []string{"retriable-headers", "retriable-status-codes", "connect-failure", "refused-stream", "reset-before-request", "envoy-ratelimited"}

func retryOnTokens(s string) []string {
	var on []string
	for _, tok := range strings.Split(s, ",") {
		if tok = strings.TrimSpace(tok); tok != "" {
			on = append(on, tok)
		}
	}
	return on
}

// checkRoute checks what the route and its virtual host must give every attempt.
func (k *keypoolChecker) checkRoute(h *hcmEntry, r routeEntry) {
	e := k.cfg.Envoy
	if k.once(r.path) {
		if r.route.GetRequestBodyBufferLimit() == nil && r.route.GetPerRequestBufferLimitBytes() == nil &&
			r.vhost.GetRequestBodyBufferLimit() == nil && r.vhost.GetPerRequestBufferLimitBytes() == nil {
			k.add(r.path.f("request_body_buffer_limit").problem("unset here and on the virtual host: request bodies over the connection buffer (1 MiB) are never retried with the next key"))
		}
		if !slices.Contains(r.route.GetResponseHeadersToRemove(), e.RetryMarkerHeader) &&
			!slices.Contains(r.vhost.GetResponseHeadersToRemove(), e.RetryMarkerHeader) &&
			!slices.Contains(h.table.GetResponseHeadersToRemove(), e.RetryMarkerHeader) {
			k.add(r.path.f("response_headers_to_remove").problem("%s is not removed here, on the virtual host or the route table: the marker reaches clients when retries run out", e.RetryMarkerHeader))
		}
	}
	if e.AttemptCountHeader == "x-envoy-attempt-count" && !r.vhost.GetIncludeRequestAttemptCount() && k.once(r.vhostPath.f("include_request_attempt_count")) {
		k.add(r.vhostPath.f("include_request_attempt_count").problem("false: envoy-keypool reads x-envoy-attempt-count to tell a request's first attempt from its retries"))
	}
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

// checkProviderCluster checks the pool's provider cluster once.
func (k *keypoolChecker) checkProviderCluster(cl *clusterEntry, pool *config.Pool) {
	if !k.once(cl.path) {
		return
	}
	maxRequests, maxRetries := envoyDefaultMaxRequests, 3 // circuit_breaker.proto defaults
	cbPath := cl.path.f("circuit_breakers.thresholds")
	var budget bool
	for i, t := range cl.cluster.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		cbPath = cl.path.f("circuit_breakers.thresholds").i(i)
		if t.GetMaxRequests() != nil {
			maxRequests = int(t.GetMaxRequests().GetValue())
		}
		if t.GetMaxRetries() != nil {
			maxRetries = int(t.GetMaxRetries().GetValue())
		}
		if b := t.GetRetryBudget(); b != nil {
			budget = true
			// A retry budget replaces max_retries (circuit_breaker.proto).
			if pct := b.GetBudgetPercent(); pct == nil || pct.GetValue() < 100 {
				k.add(cbPath.f("retry_budget.budget_percent").problem("below 100%%: in a rate limit storm some requests cannot fail over and their 429 reaches the client"))
			}
		}
	}
	if !budget && maxRetries < maxRequests {
		k.add(cbPath.f("max_retries").problem("%d is below max_requests %d: when a key hits its rate limit every request in flight retries at once, and past max_retries Envoy forwards the 429 instead", maxRetries, maxRequests))
	}
	k.providerRequests += maxRequests

	idle, idleSet := time.Hour, false // HttpProtocolOptions.idle_timeout default
	if o := cl.options.GetCommonHttpProtocolOptions(); o.GetIdleTimeout() != nil {
		idle, idleSet = o.GetIdleTimeout().AsDuration(), true
	}
	if want := pool.Route.EffectiveIdleTimeout(); idle == 0 || idle > want {
		what := idle.String()
		switch {
		case !idleSet:
			what = "unset (1h)"
		case idle == 0:
			what = "0 (never)"
		}
		k.add(cl.optPath.f("common_http_protocol_options.idle_timeout").problem("%s is above route.idle_timeout %s: a request may go out on a connection the provider is closing, and that reset reaches the client", what, want))
	}
	if u, err := url.Parse(pool.Route.Upstream); err == nil && u.Scheme == "https" {
		k.checkProviderTLS(cl, u.Hostname())
	}
}

// checkProviderTLS: pool keys go only to the provider, over TLS, its certificate
// checked against a CA and its name.
func (k *keypoolChecker) checkProviderTLS(cl *clusterEntry, host string) {
	ts := cl.cluster.GetTransportSocket()
	at := cl.path.f("transport_socket")
	if ts.GetTypedConfig().GetTypeUrl() != typeUpstreamTLS {
		k.add(at.problem("no TLS to %s (https in route.upstream): pool keys would cross the network in plaintext", host))
		return
	}
	tc := upstreamTLSContext(ts)
	if tc == nil {
		k.add(at.f("typed_config").problem("does not decode as an UpstreamTlsContext"))
		return
	}
	common := tc.GetCommonTlsContext()
	vc := common.GetValidationContext()
	if vc == nil {
		vc = common.GetCombinedValidationContext().GetDefaultValidationContext()
	}
	vcPath := at.f("typed_config.common_tls_context.validation_context")
	sdsCA := common.GetValidationContextSdsSecretConfig() != nil || common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig() != nil
	if vc.GetTrustedCa() == nil && vc.GetSystemRootCerts() == nil && !sdsCA {
		k.add(vcPath.f("trusted_ca").problem("unset: Envoy accepts any certificate, and pool keys go to whoever answers for %s", host))
	}
	autoSAN := cl.options.GetUpstreamHttpProtocolOptions().GetAutoSanValidation()
	if len(vc.GetMatchTypedSubjectAltNames()) == 0 && !autoSAN {
		k.add(vcPath.f("match_typed_subject_alt_names").problem("empty: Envoy checks the chain but not the name (tls/v3/common.proto), and pool keys go to any host with a certificate from a trusted CA; match DNS %q", host))
	}
}

// checkKeypoolClusters checks each envoy-keypool cluster the filters name.
func (k *keypoolChecker) checkKeypoolClusters() {
	for _, name := range sortedKeys(k.keypool) {
		cl, ok := k.ix.cluster(name)
		if !ok {
			continue // CheckLoad's
		}
		use := k.keypool[name]
		c := cl.cluster
		hasGRPCHealth := false
		for _, hc := range c.GetHealthChecks() {
			if hc.GetGrpcHealthCheck() != nil {
				hasGRPCHealth = true
			}
		}
		if !hasGRPCHealth {
			k.add(cl.path.f("health_checks").problem("no grpc_health_check: a replica that is draining or down keeps receiving ext_proc streams"))
		}
		if got, ok := staticEndpoints(cl); ok && !sameSet(got, canonicalAddresses(k.cfg.Envoy.KeypoolAddresses)) {
			k.add(cl.path.f("load_assignment").problem("endpoints %v, but envoy.keypool_addresses says %v", got, k.cfg.Envoy.KeypoolAddresses))
		}
		connect := 5 * time.Second // Cluster.connect_timeout default
		if c.GetConnectTimeout() != nil {
			connect = c.GetConnectTimeout().AsDuration()
		}
		if connect >= use.minMessageTimeout {
			k.add(cl.path.f("connect_timeout").problem("%s is not below message_timeout %s: a connect to a replica that is gone uses up the message's time before the stream can move to another replica", connect, use.minMessageTimeout))
		}
		if cl.options.GetExplicitHttpConfig().GetHttp2ProtocolOptions().GetConnectionKeepalive() == nil {
			k.add(cl.optPath.f("explicit_http_config.http2_protocol_options.connection_keepalive").problem("unset: a replica that vanished without closing its connections (host down, network cut) keeps getting streams, each failing after message_timeout"))
		}
		maxRequests, maxRetries := envoyDefaultMaxRequests, 3
		cbPath := cl.path.f("circuit_breakers.thresholds")
		for i, t := range c.GetCircuitBreakers().GetThresholds() {
			if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
				continue
			}
			cbPath = cl.path.f("circuit_breakers.thresholds").i(i)
			if t.GetMaxRequests() != nil {
				maxRequests = int(t.GetMaxRequests().GetValue())
			}
			if t.GetMaxRetries() != nil {
				maxRetries = int(t.GetMaxRetries().GetValue())
			}
		}
		if maxRequests < k.providerRequests {
			k.add(cbPath.f("max_requests").problem("%d is below the %d provider requests the routes allow in flight: each holds an ext_proc stream, and the ones past the limit fail with 500", maxRequests, k.providerRequests))
		}
		if use.streamRetries && maxRetries < maxRequests {
			k.add(cbPath.f("max_retries").problem("%d is below max_requests %d: when a replica goes, its streams retry on another at once, and past max_retries they fail with 500 (retry_state_impl.cc shouldRetry)", maxRetries, maxRequests))
		}
		k.checkKeypoolTLS(cl)
	}
}

func (k *keypoolChecker) checkKeypoolTLS(cl *clusterEntry) {
	ts := cl.cluster.GetTransportSocket()
	at := cl.path.f("transport_socket")
	want := k.cfg.Envoy.KeypoolTLS
	isTLS := ts.GetTypedConfig().GetTypeUrl() == typeUpstreamTLS
	switch {
	case want != nil && !isTLS:
		k.add(at.problem("no TLS, but envoy.keypool_tls says envoy-keypool is reached over TLS"))
	case want == nil && isTLS:
		k.add(at.problem("TLS, but envoy.keypool_tls is unset: envoy-keypool's config and this cluster disagree"))
	case want != nil:
		tc := upstreamTLSContext(ts)
		if want.CertFile != "" && len(tc.GetCommonTlsContext().GetTlsCertificates()) == 0 && len(tc.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()) == 0 {
			k.add(at.f("typed_config.common_tls_context.tls_certificates").problem("empty, but envoy.keypool_tls has a client certificate: envoy-keypool's mutual TLS refuses Envoy"))
		}
		if !slices.Contains(tc.GetCommonTlsContext().GetAlpnProtocols(), "h2") {
			k.add(at.f("typed_config.common_tls_context.alpn_protocols").problem("lacks h2: gRPC servers refuse a TLS connection that does not offer it"))
		}
	}
}

// checkUncovered reports pools without a route, and clusters that reach a pool's
// provider without envoy-keypool (their requests leave with no pool key).
func (k *keypoolChecker) checkUncovered() {
	hosts := map[string][]string{}
	for i, p := range k.cfg.Pools {
		if u, err := url.Parse(p.Route.Upstream); err == nil && u.Hostname() != "" {
			hosts[u.Hostname()] = append(hosts[u.Hostname()], p.Name)
		}
		if !k.routed[p.Name] {
			msg := fmt.Sprintf("pool %q has no route to a cluster whose envoy-keypool filter names it", p.Name)
			if k.unresolvedRDS > 0 {
				msg += fmt.Sprintf(" (%d connection managers take their routes from RDS, which this configuration does not hold: check Envoy's /config_dump instead)", k.unresolvedRDS)
			}
			// Nothing in Envoy to name: the field is the envoy-keypool config's pool.
			k.add(&Problem{Path: fmt.Sprintf("envoy-keypool config: pools[%d]", i), Message: msg})
		}
	}
	for _, cl := range k.ix.clusters {
		if k.withProcs[cl.cluster.GetName()] || k.keypool[cl.cluster.GetName()] != nil {
			continue
		}
		for _, lle := range cl.cluster.GetLoadAssignment().GetEndpoints() {
			for _, lbe := range lle.GetLbEndpoints() {
				host := lbe.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
				if pools, ok := hosts[host]; ok && k.once(cl.path.f("load_assignment")) {
					k.add(cl.path.f("load_assignment").problem("reaches %s, the upstream of pool %s, without an envoy-keypool filter: its requests leave with no pool key", host, strings.Join(quoteAll(pools), ", ")))
				}
			}
		}
	}
}

// canonicalAddresses spells every unix: address as staticEndpoints does.
func canonicalAddresses(list []string) []string {
	out := make([]string, len(list))
	for i, a := range list {
		out[i] = a
		if p, ok := config.KeypoolSocketPath(a); ok {
			out[i] = "unix:" + p
		}
	}
	return out
}

// staticEndpoints lists the endpoints of a cluster that carries them itself (not EDS),
// as envoy.keypool_addresses spells them.
func staticEndpoints(cl *clusterEntry) ([]string, bool) {
	if cl.cluster.GetType() == clusterv3.Cluster_EDS || cl.cluster.GetClusterType() != nil || cl.cluster.GetLoadAssignment() == nil {
		return nil, false
	}
	var got []string
	for _, lle := range cl.cluster.GetLoadAssignment().GetEndpoints() {
		for _, lbe := range lle.GetLbEndpoints() {
			a := lbe.GetEndpoint().GetAddress()
			if p := a.GetPipe(); p != nil {
				got = append(got, "unix:"+p.GetPath())
				continue
			}
			sa := a.GetSocketAddress()
			got = append(got, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
		}
	}
	return got, true
}
