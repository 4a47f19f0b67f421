package standin

import (
	"errors"
	"fmt"
	"strings"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// filterConfig is one upstream HTTP filter other than the codec. The stand-in knows
// one kind, ext_proc.
type filterConfig struct {
	name     string
	disabled bool // HttpFilter.disabled: off unless a route's FilterConfig enables it
	extProc  *extProcConfig
}

type extProcConfig struct {
	cluster          string
	authority        string
	metadata         [][2]string
	retry            *retryPolicy // grpc_service.retry_policy
	failureModeAllow bool
	mode             *extprocfilterv3.ProcessingMode // as configured (DEFAULT header modes mean SEND)
	// allowModeOverride lets a headers answer's mode_override change the mode of this
	// request, restricted to allowedOverrides when set (FilterConfig in ext_proc.h).
	allowModeOverride bool
	allowedOverrides  []*extprocfilterv3.ProcessingMode
	sendBodyEarly     bool // send_body_without_waiting_for_header_response
	// forwardUntyped and forwardTyped are metadata_options.forwarding_namespaces.
	forwardUntyped []string
	forwardTyped   []string
	// requestAttributes are request_attributes, CEL attributes sent with the first
	// request message; the stand-in evaluates request.time only.
	requestAttributes []string
	messageTimeout    time.Duration
	maxMessageTimeout time.Duration
	checker           *mutationChecker
	statusOnError     int
	disableImmediate  bool
	forwardAllowed    []*stringMatcher
	forwardDisallowed []*stringMatcher
}

// buildUpstreamFilters reads an upstream filter chain. Envoy requires it to end with
// envoy.filters.http.upstream_codec, the filter that talks to the upstream.
func buildUpstreamFilters(where string, fs []*hcmv3.HttpFilter) ([]*filterConfig, error) {
	if len(fs) == 0 {
		return nil, nil
	}
	if fs[len(fs)-1].GetTypedConfig().GetTypeUrl() != typeUpstreamCdc {
		return nil, fmt.Errorf("%s: the chain must end with envoy.filters.http.upstream_codec", where)
	}
	var out []*filterConfig
	var errs []error
	for i, f := range fs[:len(fs)-1] {
		w := fmt.Sprintf("%s[%d] %q", where, i, f.GetName())
		if err := onlyFields(w, f, "name", "typed_config", "disabled"); err != nil {
			errs = append(errs, err)
			continue
		}
		ep := &extprocfilterv3.ExternalProcessor{}
		if err := unpack(w, f.GetTypedConfig(), typeExtProc, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		c, err := buildExtProc(w, ep)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, &filterConfig{name: f.GetName(), disabled: f.GetDisabled(), extProc: c})
	}
	return out, errors.Join(errs...)
}

func buildExtProc(where string, ep *extprocfilterv3.ExternalProcessor) (*extProcConfig, error) {
	if err := onlyFields(where, ep, "grpc_service", "failure_mode_allow", "processing_mode", "message_timeout",
		"max_message_timeout", "mutation_rules", "status_on_error", "stat_prefix", "disable_immediate_response",
		"forward_rules", "filter_metadata", "route_cache_action", "disable_clear_route_cache", "deferred_close_timeout",
		"allow_content_length_header", "allow_mode_override", "allowed_override_modes",
		"send_body_without_waiting_for_header_response", "metadata_options", "request_attributes"); err != nil {
		return nil, err
	}
	for i, a := range ep.GetRequestAttributes() {
		if a != "request.time" {
			return nil, fmt.Errorf("%s: request_attributes[%d] %q: %w (request.time only)", where, i, a, ErrUnsupported)
		}
	}
	c := &extProcConfig{
		failureModeAllow:  ep.GetFailureModeAllow(),
		messageTimeout:    durationOr(ep.GetMessageTimeout(), defaultMessageTimeout),
		maxMessageTimeout: durationOr(ep.GetMaxMessageTimeout(), 0),
		statusOnError:     defaultStatusOnError,
		disableImmediate:  ep.GetDisableImmediateResponse(),
		mode:              &extprocfilterv3.ProcessingMode{},
		allowModeOverride: ep.GetAllowModeOverride(),
		allowedOverrides:  ep.GetAllowedOverrideModes(),
		sendBodyEarly:     ep.GetSendBodyWithoutWaitingForHeaderResponse(),
		requestAttributes: ep.GetRequestAttributes(),
	}
	if s := ep.GetStatusOnError(); s != nil {
		c.statusOnError = statusOnErrorCode(int(s.GetCode()))
	}
	gs := ep.GetGrpcService()
	if gs == nil {
		return nil, fmt.Errorf("%s: %w: only grpc_service (no http_service)", where, ErrUnsupported)
	}
	if err := onlyFields(where+" grpc_service", gs, "envoy_grpc", "initial_metadata", "timeout", "retry_policy"); err != nil {
		return nil, err
	}
	if rp := gs.GetRetryPolicy(); rp != nil {
		var err error
		if c.retry, err = buildCoreRetryPolicy(where+" grpc_service.retry_policy", rp); err != nil {
			return nil, err
		}
	}
	eg := gs.GetEnvoyGrpc()
	if eg == nil {
		return nil, fmt.Errorf("%s grpc_service: %w: only envoy_grpc (google_grpc needs Envoy's gRPC library)", where, ErrUnsupported)
	}
	if err := onlyFields(where+" envoy_grpc", eg, "cluster_name", "authority"); err != nil {
		return nil, err
	}
	c.cluster, c.authority = eg.GetClusterName(), eg.GetAuthority()
	for _, hv := range gs.GetInitialMetadata() {
		v := hv.GetValue()
		if len(hv.GetRawValue()) > 0 {
			v = string(hv.GetRawValue())
		}
		c.metadata = append(c.metadata, [2]string{strings.ToLower(hv.GetKey()), v})
	}
	if pm := ep.GetProcessingMode(); pm != nil {
		if err := checkProcessingMode(where, pm); err != nil {
			return nil, err
		}
		c.mode = pm
	}
	if err := checkModeOverrides(where, c); err != nil {
		return nil, err
	}
	if mo := ep.GetMetadataOptions(); mo != nil {
		if err := onlyFields(where+" metadata_options", mo, "forwarding_namespaces"); err != nil {
			return nil, err
		}
		c.forwardUntyped = mo.GetForwardingNamespaces().GetUntyped()
		c.forwardTyped = mo.GetForwardingNamespaces().GetTyped()
	}
	var err error
	if c.checker, err = newMutationChecker(ep.GetMutationRules()); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if fr := ep.GetForwardRules(); fr != nil {
		if c.forwardAllowed, err = listMatchers(where+" forward_rules.allowed_headers", fr.GetAllowedHeaders().GetPatterns()); err != nil {
			return nil, err
		}
		if c.forwardDisallowed, err = listMatchers(where+" forward_rules.disallowed_headers", fr.GetDisallowedHeaders().GetPatterns()); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// checkModeOverrides accepts the mode overrides the stand-in reproduces: a
// response_body_mode BUFFERED (or NONE) with request bodies NONE, named by
// allowed_override_modes. Without that list Envoy lets the server pick any mode,
// including body modes the stand-in does not run, so it refuses the config.
func checkModeOverrides(where string, c *extProcConfig) error {
	if !c.allowModeOverride {
		return nil
	}
	if len(c.allowedOverrides) == 0 {
		return fmt.Errorf("%s: allow_mode_override without allowed_override_modes: %w (the stand-in runs only response_body_mode BUFFERED overrides)", where, ErrUnsupported)
	}
	for i, m := range c.allowedOverrides {
		if m.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_NONE ||
			(m.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_NONE && m.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED) ||
			m.GetRequestTrailerMode() == extprocfilterv3.ProcessingMode_SEND || m.GetResponseTrailerMode() == extprocfilterv3.ProcessingMode_SEND {
			return fmt.Errorf("%s: allowed_override_modes[%d]: %w (request bodies NONE, response_body_mode NONE or BUFFERED, no trailers)", where, i, ErrUnsupported)
		}
	}
	return nil
}

// statusOnErrorCode is FilterConfig::toErrorCode (ext_proc.h): only 4xx and 5xx
// statuses, anything else (unset included) is 500.
func statusOnErrorCode(code int) int {
	if code >= 400 && code <= 599 {
		return code
	}
	return defaultStatusOnError
}

// checkProcessingMode accepts header modes DEFAULT/SEND/SKIP, bodies NONE and
// trailers DEFAULT/SKIP: the stand-in does not stream bodies or trailers to the
// ext_proc server, and envoy-keypool does not ask for them.
func checkProcessingMode(where string, pm *extprocfilterv3.ProcessingMode) error {
	var errs []error
	if pm.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_NONE {
		errs = append(errs, fmt.Errorf("%s: processing_mode.request_body_mode %s: %w (NONE only)", where, pm.GetRequestBodyMode(), ErrUnsupported))
	}
	if pm.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_NONE {
		errs = append(errs, fmt.Errorf("%s: processing_mode.response_body_mode %s: %w (NONE only)", where, pm.GetResponseBodyMode(), ErrUnsupported))
	}
	if pm.GetRequestTrailerMode() == extprocfilterv3.ProcessingMode_SEND {
		errs = append(errs, fmt.Errorf("%s: processing_mode.request_trailer_mode SEND: %w", where, ErrUnsupported))
	}
	if pm.GetResponseTrailerMode() == extprocfilterv3.ProcessingMode_SEND {
		errs = append(errs, fmt.Errorf("%s: processing_mode.response_trailer_mode SEND: %w", where, ErrUnsupported))
	}
	return errors.Join(errs...)
}

func listMatchers(where string, ms []*matcherv3.StringMatcher) ([]*stringMatcher, error) {
	var out []*stringMatcher
	for i, m := range ms {
		sm, err := buildStringMatcher(fmt.Sprintf("%s[%d]", where, i), m)
		if err != nil {
			return nil, err
		}
		out = append(out, sm)
	}
	return out, nil
}

// forwarded reports whether a header goes to the ext_proc server, as
// MutationUtils::headerCanBeForwarded applies forward_rules.
func (c *extProcConfig) forwarded(key string) bool {
	in := func(ms []*stringMatcher) bool {
		for _, m := range ms {
			if m.match(key) {
				return true
			}
		}
		return false
	}
	if len(c.forwardDisallowed) > 0 && in(c.forwardDisallowed) {
		return false
	}
	return len(c.forwardAllowed) == 0 || in(c.forwardAllowed)
}
