package standin

import (
	"strconv"
	"strings"
	"time"
)

// Router request headers that steer retries and timeouts. The connection manager
// strips them from every request that is not internal (cleanInternalHeaders), so
// only a trusted hop can set them; the router reads them and removes them before the
// request goes upstream (RetryStateImpl::create in retry_state_impl.cc and
// FilterUtility::finalTimeout in router.cc).
const (
	hdrRetryOn                 = "x-envoy-retry-on"
	hdrRetryGrpcOn             = "x-envoy-retry-grpc-on"
	hdrMaxRetries              = "x-envoy-max-retries"
	hdrRetriableStatusCodes    = "x-envoy-retriable-status-codes"
	hdrRetriableHeaderNames    = "x-envoy-retriable-header-names"
	hdrHedgeOnPerTryTimeout    = "x-envoy-hedge-on-per-try-timeout"
	hdrUpstreamRqTimeoutMs     = "x-envoy-upstream-rq-timeout-ms"
	hdrUpstreamPerTryTimeoutMs = "x-envoy-upstream-rq-per-try-timeout-ms"
)

// grpcRetryOnNames are the values of x-envoy-retry-grpc-on (RetryStateImpl::parseRetryGrpcOn).
var grpcRetryOnNames = map[string]uint32{
	"cancelled":          retryOnGrpcCancelled,
	"deadline-exceeded":  retryOnGrpcDeadlineExceeded,
	"resource-exhausted": retryOnGrpcResourceExhausted,
	"unavailable":        retryOnGrpcUnavailable,
	"internal":           retryOnGrpcInternal,
}

// retryStateFor is RetryStateImpl::create and its constructor: the route's (or the
// cluster's) policy merged with the request's x-envoy-retry-on, x-envoy-retry-grpc-on,
// x-envoy-max-retries, x-envoy-retriable-status-codes and
// x-envoy-retriable-header-names, which are then consumed. It returns nil when the
// request can never be retried. Unknown retry_on tokens in a header are ignored, as
// Envoy does.
func retryStateFor(policy *retryPolicy, req *headerMap) *retryPolicy {
	retryOnHdr, hasRetryOn := req.get(hdrRetryOn)
	grpcOnHdr, hasGrpcOn := req.get(hdrRetryGrpcOn)
	maxRetriesHdr, hasMax := req.get(hdrMaxRetries)
	codesHdr, hasCodes := req.get(hdrRetriableStatusCodes)
	namesHdr, hasNames := req.get(hdrRetriableHeaderNames)
	for _, k := range []string{hdrRetryOn, hdrRetryGrpcOn, hdrMaxRetries, hdrHedgeOnPerTryTimeout, hdrRetriableHeaderNames, hdrRetriableStatusCodes} {
		req.remove(k)
	}
	if !hasRetryOn && !hasGrpcOn && (policy == nil || policy.retryOn == 0) {
		return nil
	}
	var rp retryPolicy
	if policy != nil {
		rp = *policy
		rp.retriableStatusCodes = append([]uint32(nil), policy.retriableStatusCodes...)
		rp.retriableHeaders = append([]*headerMatcher(nil), policy.retriableHeaders...)
	} else {
		rp = retryPolicy{numRetries: 1, baseInterval: 25 * time.Millisecond, maxInterval: 250 * time.Millisecond}
	}
	if hasRetryOn {
		for _, tok := range strings.Split(retryOnHdr, ",") {
			tok = strings.TrimSpace(tok)
			if _, grpc := grpcRetryOnNames[tok]; !grpc {
				rp.retryOn |= retryOnNames[tok] // parseRetryOn reads HTTP conditions only
			}
		}
	}
	if hasGrpcOn {
		for _, tok := range strings.Split(grpcOnHdr, ",") {
			rp.retryOn |= grpcRetryOnNames[strings.TrimSpace(tok)]
		}
	}
	if !rp.requestAllowsRetry(req) {
		rp.retryOn = 0
	}
	if rp.retryOn != 0 && hasMax {
		if n, err := strconv.ParseUint(strings.TrimSpace(maxRetriesHdr), 10, 32); err == nil {
			rp.numRetries = uint32(n)
		}
	}
	if hasCodes {
		for _, c := range strings.Split(codesHdr, ",") {
			if n, err := strconv.ParseUint(strings.TrimSpace(c), 10, 32); err == nil {
				rp.retriableStatusCodes = append(rp.retriableStatusCodes, uint32(n))
			}
		}
	}
	if hasNames {
		for _, n := range strings.Split(namesHdr, ",") {
			if n = strings.ToLower(strings.TrimSpace(n)); n != "" {
				rp.retriableHeaders = append(rp.retriableHeaders, &headerMatcher{name: n, presentOnlyCheck: true})
			}
		}
	}
	return &rp
}

// timeouts are the route timeout and the per-try timeout of one request
// (FilterUtility::finalTimeout).
type timeouts struct {
	global time.Duration // 0: none
	perTry time.Duration // 0: none
}

// finalTimeouts is FilterUtility::finalTimeout without gRPC timeouts: the route's
// timeout and the policy's per_try_timeout, overridden by
// x-envoy-upstream-rq-timeout-ms and x-envoy-upstream-rq-per-try-timeout-ms (consumed);
// a per-try timeout not below the route timeout is dropped.
func finalTimeouts(routeTimeout time.Duration, policy *retryPolicy, req *headerMap) timeouts {
	t := timeouts{global: routeTimeout, perTry: policy.perTryTimeoutOrZero()}
	if v, ok := req.get(hdrUpstreamRqTimeoutMs); ok {
		if n, err := strconv.ParseUint(v, 10, 63); err == nil {
			t.global = time.Duration(n) * time.Millisecond
		}
		req.remove(hdrUpstreamRqTimeoutMs)
	}
	if v, ok := req.get(hdrUpstreamPerTryTimeoutMs); ok {
		if n, err := strconv.ParseUint(v, 10, 63); err == nil {
			t.perTry = time.Duration(n) * time.Millisecond
		}
		req.remove(hdrUpstreamPerTryTimeoutMs)
	}
	if t.global > 0 && t.perTry >= t.global {
		t.perTry = 0
	}
	return t
}
