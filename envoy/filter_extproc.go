package envoy

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// processingMode is what envoy-keypool sees of every attempt: request and response
// headers, no body, no trailers (a streamed completion never waits for it).
func processingMode() *extprocv3.ProcessingMode {
	return &extprocv3.ProcessingMode{
		RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
		ResponseHeaderMode:  extprocv3.ProcessingMode_SEND,
		RequestBodyMode:     extprocv3.ProcessingMode_NONE,
		ResponseBodyMode:    extprocv3.ProcessingMode_NONE,
		RequestTrailerMode:  extprocv3.ProcessingMode_SKIP,
		ResponseTrailerMode: extprocv3.ProcessingMode_SKIP,
	}
}

// FailureBodyMode is the one processing mode envoy-keypool may switch an attempt to
// (mode_override on its response-headers answer): processingMode with the response
// body BUFFERED, so that it reads a failure's error body before it decides. Envoy
// compares the whole effective mode with allowed_override_modes (request_header_mode
// excepted; ext_proc/allowed_override_modes_set.h).
func FailureBodyMode() *extprocv3.ProcessingMode {
	m := processingMode()
	m.ResponseBodyMode = extprocv3.ProcessingMode_BUFFERED
	return m
}

// extProcFilter is envoy-keypool on the pool's cluster: request and response headers
// of every attempt, the error body of a failure when envoy-keypool asks for it, the
// pool named in trusted configuration, the model of the body forwarded.
func extProcFilter(cfg *config.Config, p *config.Pool) *extprocv3.ExternalProcessor {
	ep := &extprocv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: KeypoolCluster}},
			// Static metadata on every Process() stream of this filter: the client
			// cannot choose the pool.
			InitialMetadata: []*corev3.HeaderValue{{Key: cfg.Envoy.PoolMetadataKey, Value: p.Name}},
			RetryPolicy:     streamRetryPolicy(),
		},
		ProcessingMode: processingMode(),
		MessageTimeout: durationpb.New(messageTimeout),
		// Without envoy-keypool no key is injected: fail the attempt (500 on a broken
		// stream, 504 on a timeout) rather than send the client's request keyless.
		FailureModeAllow: false,
		// The downstream request's start time, on every attempt: the first message of
		// each stream carries it (ext_proc.cc addAttributes, evaluated with the
		// upstream filter's stream info, which is the downstream one), so envoy-keypool
		// measures a request from its start, not from the attempt's.
		RequestAttributes: []string{"request.time"},
	}
	if cfg.Envoy.ClassifiesErrorBodies() {
		// envoy-keypool may answer a failure's response headers with mode_override to
		// read its error body (quota or rate limit, Gemini's bad key, retryDelay), and
		// only with that mode (ext_proc.cc onReceiveMessage, isAllowedOverrideMode).
		ep.AllowModeOverride = true
		ep.AllowedOverrideModes = []*extprocv3.ProcessingMode{FailureBodyMode()}
	}
	if bodyNamesModel(p.Provider) {
		// The model json_to_metadata read from the body, on every headers message of
		// every attempt (ext_proc.cc addDynamicMetadata). The upstream filter manager
		// shares the downstream stream info (router/upstream_request.cc
		// UpstreamFilterManager::streamInfo), where the metadata is.
		ep.MetadataOptions = &extprocv3.MetadataOptions{ForwardingNamespaces: &extprocv3.MetadataOptions_MetadataNamespaces{
			Untyped: []string{ModelMetadataNamespace},
		}}
	}
	return ep
}

// streamRetryPolicy opens an ext_proc stream on another replica when the first cannot
// take it: the connection refused or timed out, the stream refused (HTTP/2
// REFUSED_STREAM, as after a replica's GOAWAY) or reset before the replica answered,
// or answered UNAVAILABLE with no message. ext_proc buffers the messages it sent for
// the replay when a retry policy is set (ext_proc.cc openStream); the Envoy gRPC client
// turns it into a router retry policy (common/grpc/async_client_impl.cc,
// common/http/utility.cc convertCoreToRouteRetryPolicy). Nothing is retried once the
// replica has answered: the router's response has started (router.cc
// maybeRetryReset). A retry cannot bill anything: no provider request depends on a
// message that got no answer.
func streamRetryPolicy() *corev3.RetryPolicy {
	return &corev3.RetryPolicy{
		RetryOn:    "connect-failure,refused-stream,reset,unavailable",
		NumRetries: wrapperspb.UInt32(streamRetries),
		// The core default is 1 s base, 10 s max: far past message_timeout, which
		// covers the retries. max_interval is also the stream's per-try timeout, which
		// starts only once ext_proc closed its side (router.cc onRequestComplete).
		RetryBackOff: &corev3.BackoffStrategy{
			BaseInterval: durationpb.New(streamRetryBaseInterval),
			MaxInterval:  durationpb.New(streamRetryMaxInterval),
		},
		// Another replica than the ones this stream already tried.
		RetryHostPredicate: []*corev3.RetryPolicy_RetryHostPredicate{{
			Name:       namePreviousHosts,
			ConfigType: &corev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: mustAny(&previoushostsv3.PreviousHostsPredicate{})},
		}},
		HostSelectionRetryMaxAttempts: streamHostSelections,
	}
}
