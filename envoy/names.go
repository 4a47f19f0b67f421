package envoy

import "time"

// KeypoolCluster is the name of the cluster of envoy-keypool replicas in the generated
// configuration. A pool may not take this name: each pool's cluster is named after it.
const KeypoolCluster = "envoy_keypool"

// ModelMetadataNamespace and ModelMetadataKey name the dynamic metadata in which the
// generated json_to_metadata filter leaves the model of a JSON request body, and which
// every envoy-keypool ext_proc filter forwards to envoy-keypool
// (ProcessingRequest.metadata_context.filter_metadata[namespace].fields[key]).
const (
	ModelMetadataNamespace = "envoy-keypool"
	ModelMetadataKey       = "model"
)

// KeypoolFilterName is the name of the envoy-keypool ext_proc filter in the provider
// clusters' upstream filters. Envoy looks a route's per-filter configuration up by
// that name, also for upstream filters (common/http/filter_manager.cc
// perFilterConfigs): under the conventional "envoy.filters.http.ext_proc", a route's
// ExtProcPerRoute meant for another ext_proc filter (disabled: true, say) would also
// switch envoy-keypool off and send requests keyless.
const KeypoolFilterName = "envoy-keypool"

// Names of the extensions the generated configuration uses, as Envoy registers them.
const (
	nameHCM            = "envoy.filters.network.http_connection_manager"
	nameRouter         = "envoy.filters.http.router"
	nameUpstreamCodec  = "envoy.filters.http.upstream_codec"
	nameJSONToMetadata = "envoy.filters.http.json_to_metadata"
	nameTLS            = "envoy.transport_sockets.tls"
	namePreviousHosts  = "envoy.retry_host_predicates.previous_hosts"
	// keyHTTPOptions is the typed_extension_protocol_options key of HttpProtocolOptions.
	keyHTTPOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// Numbers of the generated configuration. Each is explained in doc.go.
const (
	// messageTimeout is the ext_proc message_timeout: how long Envoy waits for
	// envoy-keypool's answer to one message (opening the stream and its connection
	// included) before failing the attempt with 504. It is Envoy's default, written out
	// because config.State's Redis timeout is bounded by it.
	messageTimeout = 200 * time.Millisecond
	// retryBaseInterval and retryMaxInterval are the fully jittered back-off between
	// attempts (RetryPolicy.retry_back_off). The next attempt uses another key, so
	// waiting buys nothing; the back-off only spreads a 429 storm's retries.
	retryBaseInterval = 10 * time.Millisecond
	retryMaxInterval  = 100 * time.Millisecond
	// extraProviderRetries are retries beyond one per key: a reset before the request
	// left (reset-before-request) uses a retry but no key.
	extraProviderRetries = 1
	// envoyDefaultMaxRequests is Envoy's default circuit breaker max_requests
	// (circuit_breaker.proto), the one the checks assume when a cluster sets none.
	envoyDefaultMaxRequests = 1024
	// providerConnectTimeout is Cluster.connect_timeout for the providers (Envoy's
	// default, written out).
	providerConnectTimeout = 5 * time.Second

	// keypoolConnectTimeout is Cluster.connect_timeout for envoy-keypool. The ext_proc
	// message_timeout (200 ms) runs while the stream's connection is made, so a connect
	// to a replica that is gone must fail well inside it for the stream retry to reach
	// another replica in time. envoy-keypool runs next to Envoy (same host, pod or
	// network): a connection there takes a millisecond or two, TLS included.
	keypoolConnectTimeout = 100 * time.Millisecond
	// Stream retry of the ext_proc filter's grpc_service (core RetryPolicy). Its
	// back-off defaults to 1 s base (common/http/utility.cc), past message_timeout.
	streamRetries           = 2
	streamRetryBaseInterval = 5 * time.Millisecond
	streamRetryMaxInterval  = 25 * time.Millisecond
	streamHostSelections    = 3
	// HTTP/2 keepalive on the envoy-keypool connections: a PING every interval (Envoy
	// adds up to 15 % jitter, never less), the connection closed when no frame answers
	// within timeout. envoy-keypool's server accepts pings 5 s apart or more.
	keepaliveInterval = 10 * time.Second
	keepaliveTimeout  = 3 * time.Second
	// Active gRPC health checks of the envoy-keypool replicas. no_traffic_interval
	// (default 60s) is lowered so that a replica that starts after Envoy is found
	// before the first requests arrive. envoy-keypool's shutdown.drain_delay must be at
	// least healthInterval + healthTimeout (doc.go).
	healthTimeout            = time.Second
	healthInterval           = 5 * time.Second
	healthUnhealthyThreshold = 2
	healthHealthyThreshold   = 1
)
