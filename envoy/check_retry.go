package envoy

import (
	"slices"
	"strings"

	"github.com/envoy-keypool/envoy-keypool/config"
)

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
