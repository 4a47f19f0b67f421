package standin

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
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
}

type resetHeader struct {
	name          string
	unixTimestamp bool
}

func buildRetryPolicy(where string, p *routev3.RetryPolicy) (*retryPolicy, error) {
	if err := onlyFields(where, p, "retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off",
		"rate_limited_retry_back_off", "retriable_headers", "retriable_request_headers", "host_selection_retry_max_attempts"); err != nil {
		return nil, err
	}
	rp := &retryPolicy{numRetries: 1, baseInterval: 25 * time.Millisecond}
	for _, tok := range strings.Split(p.GetRetryOn(), ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" {
			continue
		}
		bit, ok := retryOnNames[tok]
		if !ok {
			return nil, fmt.Errorf("%s: retry_on: unknown value %q", where, tok)
		}
		rp.retryOn |= bit
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

// resetReason is why an attempt ended without response headers.
type resetReason int

const (
	resetConnectFailure resetReason = iota // the connection could not be made
	resetRemote                            // the upstream reset or closed the stream
	resetPerTryTimeout                     // the stand-in gave up on the attempt
)

// wouldRetryFromReset is RetryStateImpl::wouldRetryFromReset. started says whether
// bytes of the request reached the upstream.
func (p *retryPolicy) wouldRetryFromReset(reason resetReason, started bool) retryDecision {
	if reason == resetConnectFailure && p.retryOn&retryOnConnectFailure != 0 {
		return retryWithBackoff
	}
	if p.retryOn&retryOnResetBeforeRequest != 0 && !started {
		return retryWithBackoff
	}
	if p.retryOn&retryOnReset != 0 {
		return retryWithBackoff
	}
	// Envoy counts a reset as a 5xx, since it becomes one.
	if p.retryOn&(retryOn5xx|retryOnGatewayError) != 0 {
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
