package extproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"cdr.dev/slog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// attempt is the state of one Process stream, that is one upstream attempt.
type attempt struct {
	server   *Server
	poolName string
	target   *Target // nil when poolName names no pool

	sawRequest bool
	id         keypool.Attempt
	key        keypool.Key  // zero until a key was injected (ids are never empty)
	pick       keypool.Pick // the pick that gave key
	answered   bool         // the pool heard how the attempt ended (Fail or Finish)
}

// handle answers one message; nil means no answer is due.
func (a *attempt) handle(ctx context.Context, req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	if req.GetObservabilityMode() {
		return nil // Envoy ignores answers in observability mode.
	}
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return a.onRequestHeaders(ctx, headerView{r.RequestHeaders.GetHeaders().GetHeaders()})
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return a.onResponseHeaders(ctx, headerView{r.ResponseHeaders.GetHeaders().GetHeaders()})
	case nil:
		return nil // e.g. a flow-control-only message: nothing to answer.
	default:
		// A phase the filter was not configured to send (bodies, trailers): an empty
		// answer of its kind lets Envoy carry on unchanged.
		a.server.metrics.unexpected.WithLabelValues("unrequested_phase").Inc()
		return EmptyAnswer(req)
	}
}

func (a *attempt) onRequestHeaders(ctx context.Context, h headerView) *extprocv3.ProcessingResponse {
	s := a.server
	if a.sawRequest {
		// One stream carries one attempt; a second set of request headers is a client
		// bug. Change nothing rather than inject twice.
		s.metrics.unexpected.WithLabelValues("repeated_request_headers").Inc()
		return continueRequestHeaders(nil)
	}
	a.sawRequest = true
	a.id = keypool.Attempt{RequestID: h.Get(s.headers.RequestID), Number: h.attemptNumber(s.headers.AttemptCount)}

	if a.target == nil {
		return a.unknownPool(ctx)
	}
	t := a.target
	if t.AllowBYOK && t.Provider.ClientCredential(h) != "" {
		s.metrics.byok.WithLabelValues(a.poolName).Inc()
		return continueRequestHeaders(nil)
	}

	pick, err := t.Pool.Pick(ctx, a.id)
	if err != nil {
		return a.exhausted(ctx, err)
	}
	key := pick.Key
	a.pick, a.key = pick, key
	s.metrics.picks.WithLabelValues(a.poolName, key.ID()).Inc()

	auth := t.Provider.AuthHeader(key.Value())
	m := &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader(auth.Name, auth.Value)}}
	for _, name := range providers.CredentialHeaders() {
		// The auth header itself is overwritten, not removed: Envoy applies
		// removals and sets in an order this server should not depend on.
		if name != auth.Name && h.Has(name) {
			m.RemoveHeaders = append(m.RemoveHeaders, name)
		}
	}
	if pathMayCarryKey(h) {
		// A client key in the query string (Gemini's ?key=) goes too; an upstream
		// ext_proc may set :path (ENVOY.md, mutation_utils.cc).
		if path, stripped := t.Provider.StripPathCredential(h.Get(":path")); stripped {
			m.SetHeaders = append(m.SetHeaders, setHeader(":path", path))
		}
	}
	return continueRequestHeaders(m)
}

func (a *attempt) onResponseHeaders(ctx context.Context, h headerView) *extprocv3.ProcessingResponse {
	s := a.server
	if a.key.ID() == "" {
		// No key of ours on this attempt (BYOK, an unknown pool, or response headers
		// without request headers before them): nothing to judge.
		if !a.sawRequest {
			s.metrics.unexpected.WithLabelValues("response_before_request").Inc()
		}
		return continueResponseHeaders(nil)
	}
	code, ok := h.status()
	if !ok {
		s.metrics.unexpected.WithLabelValues("bad_status").Inc()
		a.logger().Warn(ctx, "response headers without a valid :status; passed unchanged",
			slog.F("pool", a.poolName), slog.F("key", a.key.ID()))
		return continueResponseHeaders(nil)
	}
	t := a.target
	a.answered = true
	f, isFailure := t.Provider.Classify(code, h, nil, t.Pool.Now())
	if !isFailure {
		t.Pool.Finish(ctx, a.id, a.pick, t.Provider.Headroom(h, t.Pool.Now()))
		return continueResponseHeaders(nil)
	}
	hint := f.Hint
	out := t.Pool.Fail(ctx, a.id, a.pick, f)
	s.metrics.failures.WithLabelValues(a.poolName, a.key.ID(), string(f.Class.Reason())).Inc()
	msg := "key failed; not marked"
	switch {
	case out.Retry && !out.Cooldown.Until.IsZero():
		msg = "key failed; marked and retrying with the next key"
	case out.Retry:
		msg = "key failed; retrying with the next key"
	}
	a.logger().Info(ctx, msg,
		slog.F("pool", a.poolName), slog.F("key", a.key.ID()), slog.F("key_hint", a.key.Hint()),
		slog.F("status", code), slog.F("class", f.Class), slog.F("action", out.Action),
		slog.F("retry", out.Retry), slog.F("cooldown_until", out.Cooldown.Until),
		slog.F("provider_hint_known", hint.Known), slog.F("provider_hint", hint.After),
		slog.F("attempt", a.id.Number))
	if !out.Retry {
		return continueResponseHeaders(nil)
	}
	return continueResponseHeaders(&extprocv3.HeaderMutation{
		SetHeaders: []*corev3.HeaderValueOption{setHeader(s.headers.RetryMarker, string(f.Class))},
	})
}

// release tells the pool that the attempt's stream ended without an answer.
func (a *attempt) release(ctx context.Context) {
	if a.key.ID() != "" && !a.answered {
		a.target.Pool.Release(ctx, a.id, a.pick)
	}
}

func (a *attempt) exhausted(ctx context.Context, err error) *extprocv3.ProcessingResponse {
	s := a.server
	var ex *keypool.ExhaustedError
	if !errors.As(err, &ex) {
		// Pick returns only exhaustion today; anything else is a bug, answered as one.
		a.logger().Error(ctx, "pick failed", slog.F("pool", a.poolName), slog.Error(err))
		return immediate(a.target.Provider.ErrorResponse(providers.ErrorInfo{
			Status: 500, Kind: providers.ErrorMisconfigured, Message: "envoy-keypool: internal error", RequestID: a.id.RequestID,
		}), "keypool_internal_error")
	}
	s.metrics.exhausted.WithLabelValues(a.poolName, ex.Kind.String()).Inc()
	a.logger().Warn(ctx, "pool exhausted", slog.F("pool", a.poolName), slog.F("kind", ex.Kind.String()),
		slog.F("retry_after", ex.RetryAfter), slog.F("attempt", a.id.Number))
	return immediate(providers.ExhaustedError(a.target.Provider, ex, a.id.RequestID), "keypool_exhausted_"+ex.Kind.String())
}

// unknownPool fails closed: without a pool there is no key to inject, and passing
// the request on would send the client's placeholder credential to the provider.
func (a *attempt) unknownPool(ctx context.Context) *extprocv3.ProcessingResponse {
	s := a.server
	s.metrics.unexpected.WithLabelValues("unknown_pool").Inc()
	msg := fmt.Sprintf("envoy-keypool: the Envoy filter names no pool (gRPC initial metadata %q is missing)", s.headers.PoolMetadataKey)
	if a.poolName != "" {
		msg = fmt.Sprintf("envoy-keypool: no pool named %q is configured", a.poolName)
	}
	a.logger().Error(ctx, "request for an unknown pool refused", slog.F("pool", a.poolName),
		slog.F("metadata_key", s.headers.PoolMetadataKey))
	return immediate(providers.OpenAI{}.ErrorResponse(providers.ErrorInfo{
		Status: 500, Kind: providers.ErrorMisconfigured, Message: msg, RequestID: a.id.RequestID,
	}), "keypool_unknown_pool")
}

func (a *attempt) logger() slog.Logger {
	return a.server.log.With(slog.F("request_id", a.id.RequestID))
}

// pathMayCarryKey reports whether :path has a query with "key" in it, reading the
// value without the copy headerView.Get makes, so that most requests pay nothing for
// the ?key= check.
func pathMayCarryKey(h headerView) bool {
	for _, hv := range h.headers {
		if hv.GetKey() == ":path" {
			raw := hv.GetRawValue()
			if len(raw) == 0 {
				return strings.Contains(hv.GetValue(), "key")
			}
			return bytes.Contains(raw, []byte("key"))
		}
	}
	return false
}
