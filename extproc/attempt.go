package extproc

import (
	"context"
	"errors"
	"fmt"
	"time"

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
	started    time.Time    // the request's start (its first attempt's), for the duration metric
	pick       keypool.Pick // zero until a key was injected (ids are never empty)
	keyT       *keyTarget
	req        requestView    // the request headers, once seen
	resp       headerView     // the response headers, once seen
	answered   bool           // response headers seen
	judged     bool           // the pool heard the attempt's outcome (Fail or Finish)
	pending    *pendingAnswer // a failure answer waiting for its body
	answers    answers
	msg        extprocv3.ProcessingRequest // the message being handled (Process decodes into it)
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
// whose outcome the pool never heard (Envoy gave up, the upstream reset, the body
// asked for never came) releases what it holds, such as a probe.
func (a *attempt) end(ctx context.Context) {
	if p := a.pending; p != nil {
		// Envoy never sent the body it was asked for (its filter does not allow the
		// mode override, or the body passed its buffer limit and it answered 500
		// itself): too late to fail over, but the key's failure is still recorded,
		// as its headers classify it.
		a.pending = nil
		a.server.metrics.bodies.WithLabelValues(a.poolName, "never_sent").Inc()
		a.judge(context.WithoutCancel(ctx), p.status, p.headers, nil)
		return
	}
	if a.pick.ID() != "" && !a.judged {
		a.judged = true
		if a.pick.Probing() {
			a.server.metrics.probes.WithLabelValues(a.poolName, a.pick.ID(), "released").Inc()
		}
		a.target.Pool.Release(ctx, a.id, a.pick)
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
	a.started = requestStart(req, s.now())

	if t.AllowBYOK {
		// On a retry the credential header holds the key an earlier attempt injected
		// (all attempts share Envoy's header map): it is the client's own only when
		// it is none of the pool's keys.
		if cred := t.Provider.ClientCredential(h); cred != "" && !t.Pool.Owns(cred) {
			t.byok.Inc()
			return continueRequestHeaders(nil)
		}
	}
	path := headerValue(h.path)
	a.id.Model = requestModel(t, path, h, req)

	pick, err := t.Pool.Pick(ctx, a.id)
	if err != nil {
		return a.exhausted(ctx, err)
	}
	kt := t.keys[pick.Ref()]
	if kt == nil {
		// The pool handed out a key the target was not compiled with: a bug, answered
		// as one rather than with a key header built per request.
		t.Pool.Release(ctx, a.id, pick)
		return a.internalError(ctx, fmt.Errorf("pool %q picked key %q unknown to its target", a.poolName, pick.ID()))
	}
	a.pick, a.keyT = pick, kt
	kt.picks.Inc()
	if pick.Steered() {
		t.steered.Inc()
	}

	m := a.answers.requestMutation()
	m.SetHeaders = append(m.SetHeaders, kt.auth)
	if stripped, ok := t.Provider.StripPathCredential(path); ok {
		// A client key in the query string (Gemini's ?key=) must not reach the
		// provider next to the pool's. Envoy lets an upstream ext_proc set :path and
		// does not validate it (mutation_utils.cc), so only a well-formed path is set;
		// anything else fails closed rather than forward the client's key.
		if !validPath(stripped) {
			a.end(ctx)
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
	if a.pick.ID() == "" || a.answered {
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
	// Held in the attempt: handing a pointer to it to the provider as an interface
	// costs no allocation.
	a.resp = headerView{msg.GetHeaders().GetHeaders()}
	h := &a.resp
	code, ok := h.status()
	if !ok {
		s.metrics.unexpected.WithLabelValues("bad_status").Inc()
		a.logger().Warn(ctx, "response headers without a valid :status; passed unchanged",
			slog.F("pool", a.poolName), slog.F("key", a.pick.ID()))
		a.end(ctx)
		return continueResponseHeaders(nil)
	}
	t := a.target
	a.keyT.last.record(code, s.now())
	if s.bodies && t.Provider.WantsBody(code, h) {
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
	headers *headerView
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

// judge tells the pool what an upstream answer means for the attempt's key and
// returns the mutation that asks Envoy to retry, nil when no retry is due.
func (a *attempt) judge(ctx context.Context, code int, h *headerView, body []byte) *extprocv3.HeaderMutation {
	t := a.target
	now := t.Pool.Now()
	a.judged = true
	f, isFailure := t.Provider.Classify(code, h, body, now)
	if !isFailure {
		a.finish(ctx, t.Provider.Headroom(h, now))
		return nil
	}
	return a.fail(ctx, f)
}

// finish records an answer that is no key failure: the request is over for the pool.
func (a *attempt) finish(ctx context.Context, hr keypool.Headroom) {
	s, t := a.server, a.target
	fin := t.Pool.Finish(ctx, a.id, a.pick, hr)
	if fin.ProbeSucceeded {
		s.metrics.probes.WithLabelValues(a.poolName, a.pick.ID(), "success").Inc()
	}
	if fin.Depleted && fin.Changed {
		t.depleted.Inc()
		a.logger().Info(ctx, "key out of headroom; taken out until its limit resets",
			slog.F("pool", a.poolName), slog.F("key", a.pick.ID()), slog.F("key_hint", a.pick.Hint()),
			slog.F("model", fin.Model), slog.F("until", fin.Cooldown.Until),
			slog.F("requests_left", hr.Requests.Left), slog.F("tokens_left", hr.Tokens.Left))
	}
	a.ended()
}

// fail records a key failure and returns the retry marker when the request fails
// over.
func (a *attempt) fail(ctx context.Context, f keypool.Failure) *extprocv3.HeaderMutation {
	s, t := a.server, a.target
	out := t.Pool.Fail(ctx, a.id, a.pick, f)
	s.metrics.failures.WithLabelValues(a.poolName, a.pick.ID(), string(out.Class), string(out.Action)).Inc()
	if out.ProbeFailed {
		s.metrics.probes.WithLabelValues(a.poolName, a.pick.ID(), "failure").Inc()
	}
	// A burst of failures of one key logs one info line: the one that changed its
	// cooldown. The others are there at debug level.
	if out.Changed {
		a.logFailure(ctx, slog.LevelInfo, f, out)
	} else if s.debug() {
		a.logFailure(ctx, slog.LevelDebug, f, out)
	}
	if !out.Retry {
		a.ended() // the provider's answer is the client's
		return nil
	}
	return a.answers.marker(s.marker(out.Class))
}

func (a *attempt) logFailure(ctx context.Context, level slog.Level, f keypool.Failure, out keypool.Outcome) {
	msg := "key failed; retrying with the next key"
	switch {
	case !out.Retry:
		msg = "key failed; the provider's answer goes to the client"
	case out.Changed:
		msg = "key failed; marked and retrying with the next key"
	}
	fields := []slog.Field{
		slog.F("pool", a.poolName), slog.F("key", a.pick.ID()), slog.F("key_hint", a.pick.Hint()),
		slog.F("status", f.Status), slog.F("class", out.Class), slog.F("action", out.Action),
		slog.F("model", out.Model), slog.F("retry", out.Retry), slog.F("attempt", a.id.Number),
		slog.F("provider_hint_known", f.Hint.Known), slog.F("provider_hint", f.Hint.After),
	}
	if !out.Cooldown.Until.IsZero() {
		fields = append(fields, slog.F("cooldown_until", out.Cooldown.Until), slog.F("reason", out.Cooldown.Reason))
	}
	if out.Action == keypool.ActionCorroborate {
		fields = append(fields, slog.F("agreeing_requests", out.Agreeing))
	}
	if out.ProbeFailed {
		fields = append(fields, slog.F("probe_failed", true))
	}
	if level == slog.LevelInfo {
		a.logger().Info(ctx, msg, fields...)
	} else {
		a.logger().Debug(ctx, msg, fields...)
	}
}

// ended records that the request is over as far as envoy-keypool can tell: the
// client gets the answer this attempt saw.
func (a *attempt) ended() {
	t := a.target
	if a.id.Number > 0 {
		t.attempts.Observe(float64(a.id.Number))
	}
	if d := a.server.now().Sub(a.started); d >= 0 && !a.started.IsZero() {
		t.duration.Observe(d.Seconds())
	}
}

func (a *attempt) exhausted(ctx context.Context, err error) *extprocv3.ProcessingResponse {
	s := a.server
	var ex *keypool.ExhaustedError
	if !errors.As(err, &ex) {
		return a.internalError(ctx, err)
	}
	s.metrics.exhausted.WithLabelValues(a.poolName, ex.Kind.String()).Inc()
	a.ended()
	a.logger().Warn(ctx, "pool exhausted", slog.F("pool", a.poolName), slog.F("kind", ex.Kind.String()),
		slog.F("model", ex.Model), slog.F("retry_after", ex.RetryAfter), slog.F("attempt", a.id.Number))
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
