// Package standin is the Envoy stand-in: a small Go HTTP proxy that reads the same
// Envoy bootstrap YAML users run (through go-control-plane's typed Bootstrap) and
// reproduces the parts of Envoy's behaviour that envoy-keypool relies on, so tests can
// run the real configuration on machines where no Envoy binary exists.
//
// It is not Envoy and never claims to be. Each behaviour follows Envoy 1.37's source
// (paths under source/ of the v1.37.0 release, named in the code's comments) and
// config it does not implement is refused with an error naming the field
// (errors.Is(err, ErrUnsupported)) rather than ignored.
//
// # What it reproduces
//
// Connection manager (common/http/conn_manager_utility.cc, filter_manager.cc):
//   - the first static listener with one HTTP connection manager, an inline
//     route_config (virtual hosts, prefix/path routes, prefix_rewrite, host rewrites,
//     request/response header additions and removals with literal values or
//     %DYNAMIC_METADATA(ns:key)%, route timeout, typed_per_filter_config
//     FilterConfig{disabled} for downstream and upstream filters by name);
//   - request header sanitising: connection-specific headers, x-forwarded-for and
//     x-forwarded-proto with use_remote_address (xff_num_trusted_hops,
//     skip_xff_append), internal_address_config (none: no client is internal),
//     x-envoy-internal, x-envoy-external-address, via; the router's x-envoy-* controls
//     stripped from non-internal requests and honoured from internal ones;
//     x-request-id generated, replaced on edge requests unless
//     preserve_external_request_id (extensions/request_id/uuid/config.cc);
//   - local replies: the route's response header operations first, then the router's
//     or the filter's own headers (an ImmediateResponse's mutation), content-length and
//     text/plain; an upstream filter's reply gets no x-envoy-attempt-count;
//   - the stream buffer limit (the listener's, raised to the route's,
//     conn_manager_impl.cc refreshBufferLimit) and its 413/500 replies.
//
// Downstream filters: envoy.filters.http.json_to_metadata request rules
// (extensions/filters/http/json_to_metadata/filter.cc: content types, on_present /
// on_missing / on_error, value types, the 8 KiB limit, Envoy's JSON loader quirks),
// optionally behind match_delegate (ExtensionWithMatcher with an xds matcher_list on
// request headers and SkipFilter actions); the body it buffers goes on to the router.
//
// Router (common/router/router.cc, retry_state_impl.cc, upstream_request.cc,
// upstream_codec_filter.cc): a fresh upstream filter chain per attempt on one shared
// request header map (so an upstream filter's :path rewrite goes upstream and stays
// for retries), x-envoy-attempt-count, the retry decision after the upstream filters
// saw the response headers, retry_on (5xx, gateway-error, reset, connect-failure,
// refused-stream, reset-before-request, retriable-4xx, retriable-status-codes,
// retriable-headers, envoy-ratelimited, gRPC codes) in wouldRetryFromReset's order,
// num_retries, fully jittered back-off, rate_limited_retry_back_off, the cluster
// circuit breaker's max_retries or retry_budget, the request body buffered for replay
// up to the buffer limit, per-try and route timeouts, x-envoy-expected-rq-timeout-ms,
// the cluster-level retry_policy and http_filters of HttpProtocolOptions, and the
// reset of a retried response that has a body (which closes an HTTP/1.1 connection).
//
// Clusters and connection pools (common/conn_pool/conn_pool_base.cc): STATIC,
// STRICT_DNS and LOGICAL_DNS clusters, socket and pipe (Unix socket) endpoints,
// round-robin over healthy hosts with the panic threshold, one pool per host and SNI,
// max_connections, max_pending_requests and max_requests with their 503 overflow
// replies (never retried), idle_timeout and max_requests_per_connection, upstream TLS
// and mTLS (sni, auto_sni, ALPN, trusted CA, SAN matchers, client certificates),
// HTTP/1.1, HTTP/2 (h2c or ALPN) and HTTP/2 connection_keepalive, active gRPC health
// checks on their own connection.
//
// ext_proc as an upstream filter (extensions/filters/http/ext_proc/ext_proc.cc,
// processor_state.cc, mutation_utils.cc, filters/common/mutation_rules): one Process()
// stream per attempt over the stand-in's own gRPC client
// (common/grpc/async_client_impl.cc): initial_metadata, grpc_service.retry_policy with
// the previous_hosts predicate, message_timeout from the moment a message is sent (so
// it covers opening the stream, the connection and its retries), header messages
// (SEND/SKIP) with metadata_context from metadata_options.forwarding_namespaces,
// protocol_config and the request.time attribute, header mutations under
// HeaderMutationRules with Envoy's count and size limits, mode_override to a BUFFERED
// response body under allow_mode_override and allowed_override_modes (headers held,
// the body answer's header and body mutations applied), ImmediateResponse,
// status_on_error (4xx/5xx only), failure_mode_allow, override_message_timeout.
//
// # What it does not reproduce
//
// Downstream TLS, dynamic resources (xDS), the admin interface, access logs and stats
// sinks (Stats keeps a few counters instead), request bodies and trailers in ext_proc
// (the stand-in refuses body modes other than a BUFFERED response reached by
// mode_override), response rules of json_to_metadata, formatters other than
// DYNAMIC_METADATA, filter-specific per-route configs, weighted or header-selected
// clusters, outlier detection, health-check jitter, the gRPC client's
// x-envoy-internal / x-forwarded-for headers, HTTP/2 PINGs on a fixed period (it
// pings after connection_keepalive.interval without a received frame, which finds a
// dead connection as fast), typed dynamic metadata, and JSON nested deeper than
// encoding/json's limit. The server header of upstream responses is passed through.
package standin
