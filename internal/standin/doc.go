// Package standin is the Envoy stand-in: a small Go HTTP proxy that reads the same
// Envoy bootstrap YAML users run (through go-control-plane's typed Bootstrap) and
// reproduces the parts of Envoy's behaviour that envoy-keypool relies on, so tests can
// run the real configuration on machines where no Envoy binary exists.
//
// It is not Envoy and never claims to be: it mirrors documented and source-verified
// behaviour (router.cc, retry_state_impl.cc, ext_proc.cc, mutation_utils.cc,
// mutation_rules.cc, health_checker_impl.cc) and rejects, with an error naming the
// field, any configuration it does not implement, rather than ignoring a field that
// would change what a client sees.
//
// What it reproduces:
//   - the first static listener with an HTTP connection manager, an inline route_config
//     (virtual hosts, prefix/path routes, prefix_rewrite, host rewrites, literal
//     request/response header additions and removals, route timeout), http_filters that
//     end with the router, and the router's upstream_http_filters;
//   - x-request-id generation and x-envoy-attempt-count on every attempt;
//   - the router's attempt loop: a fresh upstream filter chain per attempt, one shared
//     request header map, the retry decision made after the upstream filters saw the
//     response headers, retry_on (5xx, gateway-error, reset, connect-failure,
//     retriable-4xx, retriable-status-codes, retriable-headers, envoy-ratelimited),
//     num_retries, fully jittered exponential back-off, rate_limited_retry_back_off,
//     the cluster circuit breaker's max_retries or retry_budget, the request body
//     buffered for replay up to the buffer limit, per-try and route timeouts, and the
//     cluster-level retry_policy and http_filters of HttpProtocolOptions (Envoy ≥ 1.37);
//   - the ext_proc filter as an upstream filter: one Process() stream per attempt with
//     the filter's initial_metadata, request and response headers (SEND/SKIP), header
//     mutations checked with HeaderMutationRules, ImmediateResponse as the final answer,
//     status_on_error, message_timeout (504) and failure_mode_allow;
//   - STATIC, STRICT_DNS and LOGICAL_DNS clusters, round-robin over healthy endpoints
//     with Envoy's panic threshold, active gRPC health checks, upstream TLS with SNI and
//     HTTP/1.1 or HTTP/2 upstreams; response bodies streamed and flushed chunk by chunk.
//
// What it deliberately does not reproduce: downstream TLS, dynamic resources (xDS),
// the admin interface, access logs and stats sinks (it keeps a few counters instead,
// see Stats), request and response bodies and trailers in ext_proc, substitution
// formatters in header values, weighted or header-selected clusters, outlier detection,
// connection-level circuit breakers (max_connections, max_pending_requests,
// max_requests), health-check jitter, and Envoy's request header sanitising for edge
// requests beyond x-request-id. The server header of upstream responses is passed
// through unchanged.
package standin
