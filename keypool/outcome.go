package keypool

import (
	"context"
	"time"
)

// Outcome is what Fail did about a key failure.
type Outcome struct {
	// Class is the failure's class.
	Class Class
	// Action is what was done: the pool's action for the class, or ActionCool when
	// the failure ended a probe of the key.
	Action Action
	// Retry says to add the retry marker: the request fails over, and its next
	// attempt gets another key or the exhaustion answer. False for ActionPass, and
	// when the failure cooled nothing and no other key is left for the request:
	// the provider's own answer is then the client's (a 403 for a model no key
	// may use is the client's to see, not a 429 of ours).
	Retry bool
	// Model is the scope of the failure: the model its cooldown applies to, ""
	// when key-wide.
	Model string
	// Cooldown is the cooldown in force on the scope after the failure; zero when
	// the scope does not cool.
	Cooldown Cooldown
	// Changed reports whether this failure set or lengthened the cooldown: the one
	// failure in a burst worth an info log line.
	Changed bool
	// Agreeing is, for ActionCorroborate, how many distinct requests saw the class
	// on the scope within the window, this one included.
	Agreeing int
	// ProbeFailed reports that the attempt probed the key and the failure cooled it
	// again, for twice its last cooldown (capped at the reason's max).
	ProbeFailed bool
}

// LastFailure is the last key failure this replica saw on a key.
type LastFailure struct {
	Class  Class
	Action Action // as taken (Outcome.Action)
	Status int
	Model  string // the failure's scope; "" key-wide
	At     time.Time
}

// Fail records that the provider refused pk's key during attempt a, as f
// classifies it, and applies the pool's action for the class:
//   - cool: the scope cools (one atomic write that never shortens a later
//     cooldown, recording the request's tried key with it);
//   - failover: only the request's tried set records the key;
//   - corroborate: the tried set records the key, and the scope cools once the
//     quorum of distinct requests saw the class on it within the window;
//   - pass: nothing is recorded, and the answer goes to the client.
//
// The scope is (key, model) for rate-limit classes when the pick's model is known,
// else the key. When the attempt probed the scope, a failure whose action cools or
// corroborates cools it again at once for twice its last span; any other ends the
// probe without a verdict.
func (p *Pool) Fail(ctx context.Context, a Attempt, pk Pick, f Failure) Outcome {
	return p.fail(ctx, a, pk, f, p.failures.Action(f.Class))
}

// FailKey is State v1's Fail: it cools key for reason whatever the pool's failure
// policy says, and returns the cooldown in force.
//
// Deprecated: use Fail with the Pick and a classified Failure. FailKey stays only
// until package redisstate's tests have moved to v2.
func (p *Pool) FailKey(ctx context.Context, a Attempt, key Key, reason Reason, hint Hint) Cooldown {
	class := ClassRateLimited
	switch reason {
	case ReasonUnauthorized:
		class = ClassUnauthorized
	case ReasonForbidden:
		class = ClassForbidden
	case ReasonQuota:
		class = ClassQuota
	}
	i, ok := p.byRef[key.ref]
	if !ok {
		return Cooldown{}
	}
	return p.fail(ctx, a, Pick{Key: key, index: i}, Failure{Class: class, Hint: hint}, ActionCool).Cooldown
}

func (p *Pool) fail(ctx context.Context, a Attempt, pk Pick, f Failure, action Action) Outcome {
	if pk.Key.id == "" {
		return Outcome{Class: f.Class, Action: ActionPass}
	}
	t := now(p.clock)
	scope := Scope{Ref: pk.Key.ref}
	if f.Class.ModelScoped() && pk.model != "" && p.modelAllowed(pk.model, t) {
		scope.Model = pk.model
	}
	out := Outcome{Class: f.Class, Action: action, Model: scope.Model}

	decisive := action == ActionCool || action == ActionCorroborate
	probed := false
	for _, fl := range [...]uint8{flagProbeKey, flagProbeModel} {
		if pk.probes&fl == 0 {
			continue
		}
		if decisive && pk.scopeOf(fl) == scope {
			probed = true // the mark below ends the lease
			continue
		}
		p.state.EndProbe(ctx, p.name, pk.scopeOf(fl), pk.holder, ProbeReleased)
	}

	reason := f.Class.Reason()
	var res MarkResult
	switch {
	case probed:
		span := p.doubledSpan(scope, reason, f.Hint)
		res = p.state.Mark(ctx, p.name, Mark{Scope: scope, Cooldown: Cooldown{Until: t.Add(span), Reason: reason},
			Span: span, RequestID: a.RequestID})
		out.Action, out.ProbeFailed = ActionCool, true
	case action == ActionFailover:
		if a.RequestID != "" {
			res.Tried = p.state.RecordTried(ctx, p.name, pk.Key.ref, a.RequestID)
		}
	case action == ActionCool:
		span := p.rules.Duration(reason, f.Hint)
		res = p.state.Mark(ctx, p.name, Mark{Scope: scope, Cooldown: Cooldown{Until: t.Add(span), Reason: reason},
			Span: span, RequestID: a.RequestID})
	case action == ActionCorroborate:
		span := p.rules.Duration(reason, f.Hint)
		res = p.state.Corroborate(ctx, p.name, Corroboration{
			Scope: scope, Class: f.Class, RequestID: a.RequestID,
			Quorum: p.failures.Quorum, Window: p.failures.Window,
			Cooldown: Cooldown{Until: t.Add(span), Reason: reason}, Span: span,
		})
		out.Agreeing = res.Agreeing
	}
	if res.Entry.PhaseAt(t) == PhaseCooling {
		out.Cooldown = res.Entry.Cooldown
	}
	out.Changed = res.Changed
	recorded := action != ActionPass || out.ProbeFailed
	out.Retry = recorded && (!out.Cooldown.Until.IsZero() || p.anotherKeyFor(a, pk, res.Tried, t))
	if !out.Retry && a.RequestID != "" && (recorded || !a.first()) {
		// The provider's answer ends the request.
		p.state.Forget(ctx, p.name, a.RequestID)
	}
	p.lastFailure[pk.index].Store(&LastFailure{Class: f.Class, Action: out.Action, Status: f.Status, Model: scope.Model, At: t})
	return out
}

// anotherKeyFor reports whether the request of attempt a, having failed with pk's
// key and the keys tried, could still get a key for its model.
func (p *Pool) anotherKeyFor(a Attempt, pk Pick, tried []string, t time.Time) bool {
	if a.RequestID == "" {
		return false // a retry could not be told from a new request: it would get the same key
	}
	var inline [8]int32
	excluded := append(inline[:0], pk.index)
	for _, ref := range tried {
		if i, ok := p.byRef[ref]; ok {
			excluded = exclude(excluded, i)
		}
	}
	return p.currentIndex(t).selector(pk.model).hasCandidate(p, excluded)
}

// modelAllowed reports whether model may hold state of its own: it already does,
// or fewer than MaxModels models do.
func (p *Pool) modelAllowed(model string, t time.Time) bool {
	ix := p.currentIndex(t)
	_, has := ix.models[model]
	return has || len(ix.models) < p.maxModels
}

// doubledSpan is the cooldown of a failed probe: twice the scope's last span,
// capped at the reason's max, and never shorter than what the provider asked for.
func (p *Pool) doubledSpan(scope Scope, reason Reason, hint Hint) time.Duration {
	d := p.rules.Duration(reason, hint)
	if e, ok := p.viewEntry(scope); ok && e.Span > 0 {
		d = max(d, min(2*e.Span, p.rules.rule(reason).Max))
	}
	return d
}

// viewEntry is scope's entry in the local view.
func (p *Pool) viewEntry(scope Scope) (Entry, bool) {
	v := p.state.View(p.name)
	if v == nil {
		return Entry{}, false
	}
	e, ok := v.Entries[scope]
	return e, ok
}

// Finished is what Finish did.
type Finished struct {
	// ProbeSucceeded reports that the attempt probed the key and its answer
	// returned the key to service.
	ProbeSucceeded bool
	// Depleted reports that the answer's headroom says the key's limit is spent:
	// the scope (Model) is out until Cooldown.Until, reason depleted.
	Depleted bool
	Model    string
	Cooldown Cooldown
	// Changed reports whether Finish wrote the depleted mark; false when the local
	// view already had the scope out at least that long (the usual case for every
	// answer after the first that crossed the threshold).
	Changed bool
}

// Finish records an answer of pk's key that is no key failure, for every such
// answer: a probe the attempt held succeeds (the key returns), the request's tried
// set is forgotten (the answer ends the request), and headroom steering runs: when
// h says the key's remaining requests are 0, or its remaining tokens are below the
// pool's floor, the scope ((key, model) when the model is known) is taken out until
// the limit's reset, reason depleted. It writes state only when crossing the
// threshold; a first attempt with a healthy answer does no I/O.
func (p *Pool) Finish(ctx context.Context, a Attempt, pk Pick, h Headroom) Finished {
	var fin Finished
	if pk.Key.id == "" {
		return fin
	}
	if pk.probes != 0 {
		p.endProbes(ctx, &pk, ProbeSucceeded)
		fin.ProbeSucceeded = true
	}
	if !a.first() {
		p.state.Forget(ctx, p.name, a.RequestID)
	}
	if !h.Known() {
		return fin
	}
	wait, spent := p.headroom.depletedFor(h, p.rules)
	if !spent {
		return fin
	}
	t := now(p.clock)
	scope := Scope{Ref: pk.Key.ref}
	if pk.model != "" && p.modelAllowed(pk.model, t) {
		scope.Model = pk.model
	}
	until := t.Add(wait)
	fin.Depleted, fin.Model = true, scope.Model
	// Providers' resets jitter by a few milliseconds from one answer to the next:
	// a cooldown ending that close is "at least that long".
	slack := min(wait/10, time.Second)
	for _, s := range []Scope{{Ref: scope.Ref}, scope} {
		if e, ok := p.viewEntry(s); ok && e.PhaseAt(t) == PhaseCooling && !e.Until.Add(slack).Before(until) {
			fin.Cooldown = e.Cooldown
			return fin
		}
	}
	res := p.state.Mark(ctx, p.name, Mark{Scope: scope, Cooldown: Cooldown{Until: until, Reason: ReasonDepleted}, Span: wait})
	fin.Cooldown, fin.Changed = res.Entry.Cooldown, res.Changed
	return fin
}

// Release ends an attempt whose stream closed with no answer (the client went
// away, Envoy reset the stream): a probe it held ends without a verdict, so the
// next request may probe. The request's tried set stays: another attempt of the
// request may still come.
//
// The stream's context is usually cancelled by then: the lease is ended without
// its cancellation (the State's own timeout still bounds it).
func (p *Pool) Release(ctx context.Context, _ Attempt, pk Pick) {
	if pk.probes != 0 {
		p.endProbes(context.WithoutCancel(ctx), &pk, ProbeReleased)
	}
}
