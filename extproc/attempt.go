package extproc

import (
	"context"
	"errors"
	"fmt"

	"cdr.dev/slog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// attempt is the state of one Process stream, that is one upstream attempt.
type attempt struct {
	server   *Server
	poolName string
	target   *target // nil when poolName names no pool

	sawRequest bool
	id         keypool.Attempt
	key        keypool.Key // zero until a key was injected (ids are never empty)
	keyT       *keyTarget
	req        requestView    // the request headers, once seen
	model      string         // the request's model; "" when unknown
	answered   bool           // response headers seen
	pending    *pendingAnswer // a failure answer waiting for its body
	answers    answers
}

// handle answers one message; nil means no answer is due.
func (a *attempt) handle(ctx context.Context, req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	if req.GetObservabilityMode() {
		return nil // Envoy ignores answers in observability mode.
	}
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return a.onRequestHeaders(ctx, req, r.RequestHeaders)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return a.onResponseHeaders(ctx, r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		return a.onResponseBody(ctx, r.ResponseBody)
	case nil:
		return nil // e.g. a flow-control-only message: nothing to answer.
	default:
		// A phase the filter was not configured to send (bodies, trailers): an empty
		// answer of its kind lets Envoy carry on unchanged.
		a.server.metrics.unexpected.WithLabelValues("unrequested_phase").Inc()
		return EmptyAnswer(req)
	}
}

// end runs when the stream ends, whatever ended it: an attempt that got a key but
// no answer the pool could judge (Envoy gave up, the upstream reset, a body never
// came) releases what it holds.
func (a *attempt) end(ctx context.Context) {
	if a.key.ID() != "" && (!a.answered || a.pending != nil) {
		a.release(ctx)
	}
}

func (a *attempt) onRequestHeaders(ctx context.Context, req *extprocv3.ProcessingRequest, msg *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	s := a.server
	if a.sawRequest {
		// One stream carries one attempt; a second set of request headers is a client
		// bug. Change nothing rather than inject twice.
		s.metrics.unexpected.WithLabelValues("repeated_request_headers").Inc()
		return continueRequestHeaders(nil)
	}
	a.sawRequest = true
	if a.target == nil {
		a.id.RequestID = headerView{msg.GetHeaders().GetHeaders()}.Get(s.headers.RequestID)
		return a.unknownPool(ctx)
	}
	t := a.target
	// The view lives in the attempt, which is on the heap anyway: handing it to the
	// provider as an interface costs no allocation of its own.
	a.req = readRequest(msg.GetHeaders().GetHeaders(), &t.names)
	h := &a.req
	a.id = keypool.Attempt{RequestID: headerValue(h.requestID), Number: parseAttemptNumber(headerValue(h.attempt))}

	if t.AllowBYOK && t.Provider.ClientCredential(h) != "" {
		t.byok.Inc()
		return continueRequestHeaders(nil)
	}
	path := headerValue(h.path)
	a.model = requestModel(t, path, h, req)

	key, err := t.Pool.Pick(ctx, a.id)
	if err != nil {
		return a.exhausted(ctx, err)
	}
	kt := t.keys[key.Ref()]
	if kt == nil {
		// The pool handed out a key the target was not compiled with: a bug, answered
		// as one rather than with a key header built per request.
		return a.internalError(ctx, fmt.Errorf("pool %q picked key %q unknown to its target", a.poolName, key.ID()))
	}
	a.key, a.keyT = key, kt
	kt.picks.Inc()

	m := a.answers.requestMutation()
	m.SetHeaders = append(m.SetHeaders, kt.auth)
	if stripped, ok := t.Provider.StripPathCredential(path); ok {
		// A client key in the query string (Gemini's ?key=) must not reach the
		// provider next to the pool's. Envoy lets an upstream ext_proc set :path and
		// does not validate it (mutation_utils.cc), so only a well-formed path is set;
		// anything else fails closed rather than forward the client's key.
		if !validPath(stripped) {
			return a.internalError(ctx, fmt.Errorf("pool %q: the provider could not remove the client credential from the path", a.poolName))
		}
		m.SetHeaders = append(m.SetHeaders, setHeader(":path", stripped))
	}
	for i, hv := range h.credentials {
		// The auth header itself is overwritten, not removed: Envoy applies
		// removals before sets (mutation_utils.cc), but an answer should not
		// depend on that order.
		if hv != nil && t.names.credentials[i] != kt.authName {
			m.RemoveHeaders = append(m.RemoveHeaders, t.names.credentials[i])
		}
	}
	if h.model != nil {
		m.RemoveHeaders = append(m.RemoveHeaders, t.names.model)
	}
	return a.answers.continueRequest(m)
}

func (a *attempt) onResponseHeaders(ctx context.Context, msg *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	s := a.server
	if a.key.ID() == "" || a.answered {
		// No key of ours on this attempt (BYOK, an unknown pool, or response headers
		// without request headers before them), or a second set of response headers:
		// nothing to judge.
		if !a.sawRequest {
			s.metrics.unexpected.WithLabelValues("response_before_request").Inc()
		} else if a.answered {
			s.metrics.unexpected.WithLabelValues("repeated_response_headers").Inc()
		}
		return continueResponseHeaders(nil)
	}
	a.answered = true
	h := headerView{msg.GetHeaders().GetHeaders()}
	code, ok := h.status()
	if !ok {
		s.metrics.unexpected.WithLabelValues("bad_status").Inc()
		a.logger().Warn(ctx, "response headers without a valid :status; passed unchanged",
			slog.F("pool", a.poolName), slog.F("key", a.key.ID()))
		a.release(ctx)
		return continueResponseHeaders(nil)
	}
	t := a.target
	a.keyT.last.record(code, s.now())
	if t.Provider.WantsBody(code, h) {
		d := bodyAvailability(msg, h)
		s.metrics.bodies.WithLabelValues(a.poolName, string(d)).Inc()
		if d == bodyRequested {
			a.pending = &pendingAnswer{status: code, headers: h}
			return bufferResponseBody()
		}
	}
	return a.answers.continueResponse(a.judge(ctx, code, h, nil))
}

// pendingAnswer is a failure answer whose headers Envoy holds while it buffers the
// error body the server asked for.
type pendingAnswer struct {
	status  int
	headers headerView
}

// onResponseBody decides a failure answer whose body the server asked for. The
// retry marker goes on this answer: Envoy applies it to the headers it held.
func (a *attempt) onResponseBody(ctx context.Context, msg *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	p := a.pending
	if p == nil {
		a.server.metrics.unexpected.WithLabelValues("unrequested_phase").Inc()
		return continueResponseBody(nil)
	}
	a.pending = nil
	a.server.metrics.bodies.WithLabelValues(a.poolName, "classified").Inc()
	return continueResponseBody(a.judge(ctx, p.status, p.headers, msg.GetBody()))
}

// judge decides what an upstream answer means for the attempt's key and returns the
// mutation that asks Envoy to retry, nil when no retry is due.
func (a *attempt) judge(ctx context.Context, code int, h headerView, body []byte) *extprocv3.HeaderMutation {
	t := a.target
	f, isFailure := t.Provider.Classify(code, h, body, t.Pool.Now())
	if !isFailure {
		a.finish(ctx, h)
		return nil
	}
	return a.fail(ctx, f)
}

// fail records a key failure and returns the retry marker when the request fails over.
func (a *attempt) fail(ctx context.Context, f keypool.Failure) *extprocv3.HeaderMutation {
	s, t := a.server, a.target
	if f.Class == keypool.ClassOverloaded || !t.FailsOver(f.Status) {
		a.finish(ctx, headerView{})
		return nil
	}
	reason, hint := f.Class.Reason(), f.Hint
	c := t.Pool.Fail(ctx, a.id, a.key, reason, hint)
	s.metrics.failures.WithLabelValues(a.poolName, a.key.ID(), string(f.Class), string(keypool.ActionCool)).Inc()
	a.logger().Info(ctx, "key failed; marked and retrying with the next key",
		slog.F("pool", a.poolName), slog.F("key", a.key.ID()), slog.F("key_hint", a.key.Hint()),
		slog.F("status", f.Status), slog.F("class", f.Class), slog.F("cooldown_until", c.Until),
		slog.F("provider_hint_known", hint.Known), slog.F("provider_hint", hint.After),
		slog.F("attempt", a.id.Number))
	return a.answers.marker(s.marker(f.Class))
}

// finish records an answer that is no key failure: the request is over for the pool.
func (a *attempt) finish(context.Context, headerView) {}

// release runs when the attempt ends without an answer the pool can judge.
func (a *attempt) release(context.Context) {}

func (a *attempt) exhausted(ctx context.Context, err error) *extprocv3.ProcessingResponse {
	s := a.server
	var ex *keypool.ExhaustedError
	if !errors.As(err, &ex) {
		return a.internalError(ctx, err)
	}
	s.metrics.exhausted.WithLabelValues(a.poolName, ex.Kind.String()).Inc()
	a.logger().Warn(ctx, "pool exhausted", slog.F("pool", a.poolName), slog.F("kind", ex.Kind.String()),
		slog.F("retry_after", ex.RetryAfter), slog.F("attempt", a.id.Number))
	return immediate(providers.ExhaustedError(a.target.Provider, ex, a.id.RequestID), "keypool_exhausted_"+ex.Kind.String())
}

// internalError answers a bug (Pick returns only exhaustion) as one: a 500 in the
// provider's format.
func (a *attempt) internalError(ctx context.Context, err error) *extprocv3.ProcessingResponse {
	a.logger().Error(ctx, "pick failed", slog.F("pool", a.poolName), slog.Error(err))
	return immediate(a.target.Provider.ErrorResponse(providers.ErrorInfo{
		Status: 500, Kind: providers.ErrorMisconfigured, Message: "envoy-keypool: internal error", RequestID: a.id.RequestID,
	}), "keypool_internal_error")
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

// logger is the request's logger, built only when a line is logged.
func (a *attempt) logger() slog.Logger {
	return a.server.log.With(slog.F("request_id", a.id.RequestID))
}
