package keypool

import (
	"context"
	"errors"
	"time"
)

// State is where key state lives: process memory for one replica ([MemoryState]),
// Redis for several (package redisstate). It is per pool and per [Scope]: a key
// (key-wide) or a (key, model) pair. Keys are named by [Key.Ref], never by value;
// request ids are the caller's, bounded by the State itself ([RequestKey]).
//
// The costs are part of the contract:
//   - View answers from the replica's local view: no I/O, no lock, no allocation.
//     It is all a healthy first attempt reads.
//   - Tried reads one request's tried set authoritatively: one round trip with
//     Redis, whatever the size of the pool. Cooldowns come from the local view,
//     kept fresh by change notifications; the tried set, written atomically with
//     each mark, is what keeps an attempt from reusing a key that failed for its
//     request, whichever replica saw the failure.
//   - Mark, RecordTried, Corroborate, AcquireProbe and EndProbe are each one atomic
//     operation (one Redis script).
//   - Forget is best effort and may be asynchronous: the tried set's short TTL is
//     the backstop.
//
// Methods of the request path never fail: when shared state cannot be reached they
// answer from, and record into, the replica's local view, bounded by ctx and the
// State's own timeout. A request that a local decision can serve is never failed
// for an outage of the shared store. Override alone reports an outage, as a
// *PendingError: the operator must know the action has not reached the other
// replicas yet.
//
// Every change a State makes or learns (its own writes, other replicas'
// notifications) is in the next View it returns, on return of the method that made
// it.
type State interface {
	// View is this replica's local view of pool's state. It does no I/O, takes no
	// lock and allocates nothing. The View is immutable: a change to the pool
	// publishes a new *View, and a View that did not change is returned again
	// (pointer equality is how a Pool knows its pick index is still current). A
	// pool without state may be nil or an empty View.
	View(pool string) *View

	// Tried lists the refs of the keys requestID already failed with in pool, read
	// authoritatively (one round trip with Redis). It is what a retry attempt
	// reads before it picks.
	Tried(ctx context.Context, pool, requestID string) []string

	// Mark cools m.Scope until m.Cooldown.Until in one atomic operation: the later
	// of the stored and the new deadline wins, so a mark never shortens a later
	// one whichever replica set it. A mark that lengthens the cooldown stores
	// m.Cooldown.Reason and m.Span and ends any probe lease of the scope (a cooling
	// scope needs no probe). When m.RequestID is set, the same operation records
	// m.Scope.Ref as tried by that request, with the tried set's TTL counted from
	// now.
	Mark(ctx context.Context, pool string, m Mark) MarkResult

	// RecordTried records that requestID failed with the key ref without cooling
	// anything (the failover action), and returns the request's tried refs.
	RecordTried(ctx context.Context, pool, ref, requestID string) []string

	// Corroborate records that c.RequestID saw a failure of class c.Class on
	// c.Scope, counts the distinct requests (across replicas) that saw that class
	// on that scope within c.Window, and when at least c.Quorum agree, marks the
	// scope as Mark would with c.Cooldown and c.Span. It records c.Scope.Ref as
	// tried by the request either way. An empty RequestID counts as a request of
	// its own each time.
	Corroborate(ctx context.Context, pool string, c Corroboration) MarkResult

	// AcquireProbe asks for the probe lease of scope: granted when the scope's
	// cooldown is over and no unexpired lease is held, to lease.Holder until
	// lease.TTL from now, so that one request at a time (across replicas) tries a
	// key whose cooldown just ended, and a lost probe cannot block the key longer
	// than the TTL. The Entry is the scope's state after the call.
	AcquireProbe(ctx context.Context, pool string, scope Scope, lease Lease) (ProbeGrant, Entry)

	// EndProbe ends holder's probe lease on scope. ProbeSucceeded also returns
	// the scope to service (its entry, and so its doubling, is removed), unless a
	// newer mark cools it again; ProbeReleased only frees the lease, leaving the
	// scope waiting for the next probe. A lease held by another holder is left
	// alone. A failed probe is not ended here: it is a Mark.
	EndProbe(ctx context.Context, pool string, scope Scope, holder string, end ProbeEnd)

	// Forget drops requestID's tried set: the request ended. Best effort; it may
	// return before the shared state is updated.
	Forget(ctx context.Context, pool, requestID string)

	// Override is an operator's action on the key ref: a non-zero c replaces the
	// key-wide state, shorter or not (disable), and ends its probe lease; the zero
	// Cooldown clears every scope of the key, key-wide and per model (enable). It
	// applies to the local view at once, even when the shared state cannot be
	// reached; it then returns a *PendingError (errors.Is(err, ErrPending)) and
	// propagates the action when the shared state returns.
	Override(ctx context.Context, pool, ref string, c Cooldown) error
}

// View is a replica's local view of one pool's state. It is immutable.
type View struct {
	// Entries holds the scopes that have state; a scope missing from it is
	// available. Never modify it.
	Entries map[Scope]Entry
}

// Entry is the state of one scope.
//
// At time t a scope is:
//   - cooling while t is before Until;
//   - probing from Until until it retires ([Entry.Retires]): every request but one
//     skips it; the one that holds the probe lease (until ProbeUntil) tries it, and
//     its answer returns the scope to service or cools it again for twice as long;
//   - available once it retired without a probe (nobody asked for the key in the
//     meantime; the doubling is forgotten too). A State may drop retired entries.
type Entry struct {
	Cooldown
	// Span is the length the cooldown was set for: a failed probe cools the scope
	// for twice its span, capped at the reason's max.
	Span time.Duration
	// ProbeUntil is when the probe lease some request holds on the scope ends;
	// zero, or in the past, when none is held.
	ProbeUntil time.Time
}

// MinProbeWindow is the shortest time a scope waits for a probe after its
// cooldown ended before it retires; a longer span waits as long as the span.
const MinProbeWindow = time.Minute

// Retires is when e stops meaning anything: MinProbeWindow or one Span (whichever
// is longer) after its cooldown ended.
func (e Entry) Retires() time.Time { return e.Until.Add(max(e.Span, MinProbeWindow)) }

// Phase is where a scope is in its cooldown cycle.
type Phase int

// The phases of a scope.
const (
	// PhaseAvailable: no state holds the scope back.
	PhaseAvailable Phase = iota
	// PhaseCooling: the scope is cooling down.
	PhaseCooling
	// PhaseProbing: the cooldown ended; one request at a time may try the scope.
	PhaseProbing
)

func (p Phase) String() string {
	switch p {
	case PhaseCooling:
		return "cooling"
	case PhaseProbing:
		return "probing"
	}
	return "available"
}

// PhaseAt is e's phase at t.
func (e Entry) PhaseAt(t time.Time) Phase {
	switch {
	case e.Until.IsZero():
		return PhaseAvailable
	case t.Before(e.Until):
		return PhaseCooling
	case t.Before(e.Retires()):
		return PhaseProbing
	}
	return PhaseAvailable
}

// ProbeHeldAt reports whether a probe lease on e is held at t.
func (e Entry) ProbeHeldAt(t time.Time) bool { return t.Before(e.ProbeUntil) }

// Mark is a cooldown to record, with the request whose failure caused it.
type Mark struct {
	Scope    Scope
	Cooldown Cooldown
	// Span is the length of the cooldown as the pool computed it (for doubling).
	Span time.Duration
	// RequestID is the request whose attempt failed; "" when unknown.
	RequestID string
}

// Corroboration is a failure that cools its scope only when Quorum distinct
// requests saw the same class on it within Window.
type Corroboration struct {
	Scope     Scope
	Class     Class
	RequestID string
	Quorum    int
	Window    time.Duration
	// Cooldown and Span are the mark made when the quorum is reached.
	Cooldown Cooldown
	Span     time.Duration
}

// MarkResult is what a write to a scope left in force.
type MarkResult struct {
	// Entry is the scope's state after the write; zero when it has none.
	Entry Entry
	// Changed reports whether the write set or lengthened the scope's cooldown.
	Changed bool
	// Tried lists the refs the request failed with, this one included; nil
	// without a request id.
	Tried []string
	// Agreeing is, for Corroborate, the number of distinct requests that saw the
	// class on the scope within the window, this one included.
	Agreeing int
}

// Lease is a probe lease asked for.
type Lease struct {
	// Holder names the attempt that probes, so that only it ends the lease.
	Holder string
	// TTL bounds the lease: a probe whose answer never comes frees the scope then.
	TTL time.Duration
}

// ProbeGrant is the answer to AcquireProbe.
type ProbeGrant int

// The answers to AcquireProbe.
const (
	// ProbeGranted: the caller holds the lease and probes the scope.
	ProbeGranted ProbeGrant = iota + 1
	// ProbeBusy: another request holds the lease (until Entry.ProbeUntil).
	ProbeBusy
	// ProbeNotNeeded: the scope has no state any more (another probe succeeded,
	// an operator enabled the key): use it without a probe.
	ProbeNotNeeded
	// ProbeCooling: the scope cools again (a newer mark).
	ProbeCooling
)

func (g ProbeGrant) String() string {
	switch g {
	case ProbeGranted:
		return "granted"
	case ProbeBusy:
		return "busy"
	case ProbeNotNeeded:
		return "not_needed"
	case ProbeCooling:
		return "cooling"
	}
	return "ProbeGrant(?)"
}

// ProbeEnd says how a probe that did not fail ended.
type ProbeEnd int

// The ends of a probe.
const (
	// ProbeSucceeded: the key answered without a key failure; the scope returns.
	ProbeSucceeded ProbeEnd = iota + 1
	// ProbeReleased: the probe told nothing (the stream ended without an answer,
	// or the failure was the request's own); the next request may probe.
	ProbeReleased
)

// ErrPending matches every *PendingError with errors.Is.
var ErrPending = errors.New("applied on this replica, pending propagation to the shared state")

// PendingError is an operator's action that took effect on this replica's view but
// has not reached the shared state yet; the State propagates it when it can.
type PendingError struct {
	// Err is why the shared state could not take it.
	Err error
}

func (e *PendingError) Error() string { return ErrPending.Error() + ": " + e.Err.Error() }

// Unwrap makes errors.Is(err, ErrPending) true and exposes the cause.
func (e *PendingError) Unwrap() []error { return []error{ErrPending, e.Err} }

// DefaultTriedTTL is how long a request's tried set outlives the request's last
// failure when nothing forgets it: long enough to cover the retry back-off between
// two attempts (Envoy's default is 25ms to 250ms), short enough that a finished
// request never holds state for minutes.
const DefaultTriedTTL = 10 * time.Second
