package standin

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	// Registers PreviousHostsPredicate, the retry host predicate the stand-in runs.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
)

// retryOn bits, the RETRY_ON_* flags of envoy/router/router.h.
const (
	retryOn5xx uint32 = 1 << iota
	retryOnGatewayError
	retryOnConnectFailure
	retryOnRetriable4xx
	retryOnRefusedStream
	retryOnRetriableStatusCodes
	retryOnReset
	retryOnRetriableHeaders
	retryOnEnvoyRateLimited
	retryOnResetBeforeRequest
	retryOnHTTP3PostConnectFailure
	retryOnGrpcCancelled
	retryOnGrpcDeadlineExceeded
	retryOnGrpcResourceExhausted
	retryOnGrpcUnavailable
	retryOnGrpcInternal
)

// retryOnNames are the x-envoy-retry-on and x-envoy-retry-grpc-on values Envoy parses
// (RetryStateImpl::parseRetryOn / parseRetryGrpcOn in retry_state_impl.cc).
var retryOnNames = map[string]uint32{
	"5xx":                        retryOn5xx,
	"gateway-error":              retryOnGatewayError,
	"connect-failure":            retryOnConnectFailure,
	"retriable-4xx":              retryOnRetriable4xx,
	"refused-stream":             retryOnRefusedStream,
	"retriable-status-codes":     retryOnRetriableStatusCodes,
	"reset":                      retryOnReset,
	"retriable-headers":          retryOnRetriableHeaders,
	"envoy-ratelimited":          retryOnEnvoyRateLimited,
	"reset-before-request":       retryOnResetBeforeRequest,
	"http3-post-connect-failure": retryOnHTTP3PostConnectFailure,
	"cancelled":                  retryOnGrpcCancelled,
	"deadline-exceeded":          retryOnGrpcDeadlineExceeded,
	"resource-exhausted":         retryOnGrpcResourceExhausted,
	"unavailable":                retryOnGrpcUnavailable,
	"internal":                   retryOnGrpcInternal,
}

// retryPolicy is a route's, virtual host's or cluster's RetryPolicy, resolved.
type retryPolicy struct {
	retryOn                 uint32
	numRetries              uint32
	perTryTimeout           time.Duration
	retriableStatusCodes    []uint32
	retriableHeaders        []*headerMatcher
	retriableRequestHeaders []*headerMatcher
	baseInterval            time.Duration
	maxInterval             time.Duration
	resetHeaders            []resetHeader
	resetMaxInterval        time.Duration
	// previousHosts is the envoy.retry_host_predicates.previous_hosts predicate: a
	// retry re-picks up to hostSelectionMaxAttempts times to avoid a host already tried.
	previousHosts            bool
	hostSelectionMaxAttempts int64
}

const typePreviousHosts = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"

// readHostPredicates accepts the previous_hosts predicate, the one the stand-in
// implements.
func (rp *retryPolicy) readHostPredicates(where string, names []string, typeURLs []string) error {
	for i, n := range names {
		if n != "envoy.retry_host_predicates.previous_hosts" || (typeURLs[i] != "" && typeURLs[i] != typePreviousHosts) {
			return fmt.Errorf("%s: retry_host_predicate[%d] %q: %w (only envoy.retry_host_predicates.previous_hosts)", where, i, n, ErrUnsupported)
		}
		rp.previousHosts = true
	}
	return nil
}

type resetHeader struct {
	name          string
	unixTimestamp bool
}

func buildRetryPolicy(where string, p *routev3.RetryPolicy) (*retryPolicy, error) {
	if err := onlyFields(where, p, "retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off",
		"rate_limited_retry_back_off", "retriable_headers", "retriable_request_headers", "host_selection_retry_max_attempts",
		"retry_host_predicate"); err != nil {
		return nil, err
	}
	rp := &retryPolicy{numRetries: 1, baseInterval: 25 * time.Millisecond, hostSelectionMaxAttempts: p.GetHostSelectionRetryMaxAttempts()}
	var names, types []string
	for _, hp := range p.GetRetryHostPredicate() {
		names, types = append(names, hp.GetName()), append(types, hp.GetTypedConfig().GetTypeUrl())
	}
	if err := rp.readHostPredicates(where, names, types); err != nil {
		return nil, err
	}
	if err := rp.parseRetryOn(where, p.GetRetryOn()); err != nil {
		return nil, err
	}
	if p.GetNumRetries() != nil {
		rp.numRetries = p.GetNumRetries().GetValue()
	}
	rp.perTryTimeout = durationOr(p.GetPerTryTimeout(), 0)
	rp.retriableStatusCodes = p.GetRetriableStatusCodes()
	for i, h := range p.GetRetriableHeaders() {
		m, err := buildHeaderMatcher(fmt.Sprintf("%s retriable_headers[%d]", where, i), h)
		if err != nil {
			return nil, err
		}
		rp.retriableHeaders = append(rp.retriableHeaders, m)
	}
	for i, h := range p.GetRetriableRequestHeaders() {
		m, err := buildHeaderMatcher(fmt.Sprintf("%s retriable_request_headers[%d]", where, i), h)
		if err != nil {
			return nil, err
		}
		rp.retriableRequestHeaders = append(rp.retriableRequestHeaders, m)
	}
	if b := p.GetRetryBackOff(); b != nil {
		rp.baseInterval = b.GetBaseInterval().AsDuration()
		if rp.baseInterval < time.Millisecond {
			rp.baseInterval = time.Millisecond // Envoy rounds sub-millisecond intervals up.
		}
	}
	rp.maxInterval = 10 * rp.baseInterval
	if b := p.GetRetryBackOff(); b != nil && b.GetMaxInterval() != nil {
		rp.maxInterval = b.GetMaxInterval().AsDuration()
		if rp.maxInterval < rp.baseInterval {
			return nil, fmt.Errorf("%s: retry_back_off.max_interval must be >= base_interval", where)
		}
	}
	if rl := p.GetRateLimitedRetryBackOff(); rl != nil {
		rp.resetMaxInterval = durationOr(rl.GetMaxInterval(), 300*time.Second)
		for _, h := range rl.GetResetHeaders() {
			rp.resetHeaders = append(rp.resetHeaders, resetHeader{
				name:          strings.ToLower(h.GetName()),
				unixTimestamp: h.GetFormat() == routev3.RetryPolicy_UNIX_TIMESTAMP,
			})
		}
	}
	return rp, nil
}

// buildCoreRetryPolicy reads the config.core.v3.RetryPolicy of a grpc_service as
// Http::Utility::convertCoreToRouteRetryPolicy (source/common/http/utility.cc) turns
// it into a route policy: num_retries 1 and a back-off of 1 s (max 10 s) by default.
// The converted policy also gets a per-try timeout equal to the back-off's maximum,
// which starts only when the stream's request side ends (router.cc onRequestComplete);
// ext_proc never half-closes its stream, so the stand-in leaves it out.
func buildCoreRetryPolicy(where string, p *corev3.RetryPolicy) (*retryPolicy, error) {
	if err := onlyFields(where, p, "retry_back_off", "num_retries", "retry_on", "retry_host_predicate", "host_selection_retry_max_attempts"); err != nil {
		return nil, err
	}
	rp := &retryPolicy{numRetries: 1, baseInterval: time.Second, maxInterval: 10 * time.Second, hostSelectionMaxAttempts: p.GetHostSelectionRetryMaxAttempts()}
	if err := rp.parseRetryOn(where, p.GetRetryOn()); err != nil {
		return nil, err
	}
	if p.GetNumRetries() != nil {
		rp.numRetries = p.GetNumRetries().GetValue()
	}
	if b := p.GetRetryBackOff(); b != nil {
		if b.GetBaseInterval() == nil {
			return nil, fmt.Errorf("%s: retry_back_off.base_interval is required", where)
		}
		rp.baseInterval = b.GetBaseInterval().AsDuration()
		rp.maxInterval = durationOr(b.GetMaxInterval(), 10*rp.baseInterval)
		if rp.maxInterval < rp.baseInterval {
			return nil, fmt.Errorf("%s: retry_back_off.max_interval must be >= base_interval", where)
		}
	}
	var names, types []string
	for _, hp := range p.GetRetryHostPredicate() {
		names, types = append(names, hp.GetName()), append(types, hp.GetTypedConfig().GetTypeUrl())
	}
	if err := rp.readHostPredicates(where, names, types); err != nil {
		return nil, err
	}
	return rp, nil
}

// parseRetryOn reads a retry_on list of HTTP and gRPC conditions.
func (rp *retryPolicy) parseRetryOn(where, list string) error {
	for _, tok := range strings.Split(list, ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" {
			continue
		}
		bit, ok := retryOnNames[tok]
		if !ok {
			return fmt.Errorf("%s: retry_on: unknown value %q", where, tok)
		}
		rp.retryOn |= bit
	}
	return nil
}

// retryDecision is RetryState::RetryDecision.
type retryDecision int

const (
	noRetry retryDecision = iota
	retryWithBackoff
)

// wouldRetryFromHeaders is RetryStateImpl::wouldRetryFromHeaders: the upstream
// response headers, after the upstream filters, decide.
func (p *retryPolicy) wouldRetryFromHeaders(resp *headerMap) retryDecision {
	if resp.has("x-envoy-ratelimited") {
		if p.retryOn&retryOnEnvoyRateLimited != 0 {
			return retryWithBackoff
		}
		return noRetry
	}
	statusText, _ := resp.get(":status")
	status, _ := strconv.Atoi(statusText)
	if p.retryOn&retryOn5xx != 0 && status >= 500 && status < 600 {
		return retryWithBackoff
	}
	if p.retryOn&retryOnGatewayError != 0 && (status == 502 || status == 503 || status == 504) {
		return retryWithBackoff
	}
	if p.retryOn&retryOnRetriable4xx != 0 && status == 409 {
		return retryWithBackoff
	}
	if p.retryOn&retryOnRetriableStatusCodes != 0 {
		for _, c := range p.retriableStatusCodes {
			// 425 Too Early is only retried for HTTP/3 early data, which the stand-in
			// never sends, so it is a plain retriable code here.
			if int(c) == status {
				return retryWithBackoff
			}
		}
	}
	if p.retryOn&retryOnRetriableHeaders != 0 {
		for _, m := range p.retriableHeaders {
			if m.matches(resp) {
				return retryWithBackoff
			}
		}
	}
	if grpc, ok := resp.get("grpc-status"); ok {
		code, err := strconv.Atoi(grpc)
		if err == nil {
			for bit, want := range map[uint32]int{retryOnGrpcCancelled: 1, retryOnGrpcDeadlineExceeded: 4, retryOnGrpcResourceExhausted: 8, retryOnGrpcUnavailable: 14, retryOnGrpcInternal: 13} {
				if p.retryOn&bit != 0 && code == want {
					return retryWithBackoff
				}
			}
		}
	}
	return noRetry
}

// resetReason is why an attempt ended without response headers, Envoy's
// Http::StreamResetReason as the stand-in can tell them apart.
type resetReason int

const (
	resetConnectFailure resetReason = iota // Local/RemoteConnectionFailure, ConnectionTimeout
	resetRemote                            // RemoteReset or ConnectionTermination
	resetRefusedStream                     // RemoteRefusedStreamReset (HTTP/2 REFUSED_STREAM, GOAWAY)
	resetPerTryTimeout                     // LocalReset from the per-try timeout
	resetOverflow                          // Overflow: a circuit breaker refused the stream
)

// wouldRetryFromReset is RetryStateImpl::wouldRetryFromReset (retry_state_impl.cc),
// in its order: overflow never retries; a connect failure retries with
// connect-failure; reset-before-request when no byte of the request went upstream
// (started is first_upstream_tx_byte_sent, set once upstream_codec encoded the
// headers); then reset, then 5xx and gateway-error (a reset becomes a 5xx), then
// refused-stream for a refused stream.
func (p *retryPolicy) wouldRetryFromReset(reason resetReason, started bool) retryDecision {
	if reason == resetOverflow {
		return noRetry
	}
	if reason == resetConnectFailure && p.retryOn&retryOnConnectFailure != 0 {
		return retryWithBackoff
	}
	if p.retryOn&retryOnResetBeforeRequest != 0 && !started {
		return retryWithBackoff
	}
	if p.retryOn&retryOnReset != 0 {
		return retryWithBackoff
	}
	if p.retryOn&(retryOn5xx|retryOnGatewayError) != 0 {
		return retryWithBackoff
	}
	if p.retryOn&retryOnRefusedStream != 0 && reason == resetRefusedStream {
		return retryWithBackoff
	}
	return noRetry
}

// requestAllowsRetry applies retriable_request_headers: when set, the request must
// match one of them or the policy is off for this request.
func (p *retryPolicy) requestAllowsRetry(req *headerMap) bool {
	if len(p.retriableRequestHeaders) == 0 {
		return true
	}
	for _, m := range p.retriableRequestHeaders {
		if m.matches(req) {
			return true
		}
	}
	return false
}

// parseResetInterval reads the first usable rate-limit reset header of a response
// (RetryStateImpl::parseResetInterval with ResetHeaderParserImpl): SECONDS is an
// integer delay, UNIX_TIMESTAMP an absolute time; values above max_interval are
// skipped.
func (p *retryPolicy) parseResetInterval(resp *headerMap, now time.Time) (time.Duration, bool) {
	for _, rh := range p.resetHeaders {
		v, ok := resp.get(rh.name)
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		var d time.Duration
		if rh.unixTimestamp {
			if int64(n) <= now.Unix() {
				continue
			}
			d = time.Unix(int64(n), 0).Sub(now)
		} else {
			d = time.Duration(n) * time.Second
		}
		if d <= p.resetMaxInterval {
			return d, true
		}
	}
	return 0, false
}
