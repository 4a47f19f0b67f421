package keypool

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// MemoryState keeps key state in process memory: the embedded default for a single
// replica. It is safe for concurrent use.
//
// Reads never lock: View is an atomic load of an immutable snapshot, which every
// write replaces (copy on write: a write copies its pool's entries, which only
// failures, probes and operators pay). Writes are serialised by one mutex. Retired
// entries are dropped by the next write to their pool.
type MemoryState struct {
	clock Clock
	tried *TriedSet

	views atomic.Pointer[poolViews] // immutable; replaced by writers

	mu       sync.Mutex // serialises writers; protects the fields below
	windows  map[windowKey]*corroborationWindow
	leases   map[leaseKey]string // the holder of each probe lease
	anonymID uint64              // numbers failures without a request id for Corroborate
}

type leaseKey struct {
	pool  string
	scope Scope
}

type windowKey struct {
	pool  string
	scope Scope
	class Class
}

// corroborationWindow holds the distinct requests that saw a class on a scope, at
// most a quorum of them (the latest), each with the time it last did.
type corroborationWindow struct {
	seen   []corroboration
	window time.Duration
}

// maxWindows bounds the corroboration windows kept before the expired ones are
// swept: scopes that saw one failure and never another would otherwise stay.
const maxWindows = 4096

type corroboration struct {
	request triedKey
	at      time.Time
}

var _ State = (*MemoryState)(nil)

// poolViews are the pools' views, in a slice that View scans: deployments have a
// handful of pools, and comparing a few short strings is cheaper than hashing one.
type poolViews struct {
	names []string
	views []*View
}

func (pv *poolViews) get(pool string) *View {
	for i, n := range pv.names {
		if n == pool {
			return pv.views[i]
		}
	}
	return nil
}

// with returns a copy of pv with pool's view replaced by v.
func (pv *poolViews) with(pool string, v *View) *poolViews {
	out := &poolViews{names: slices.Clone(pv.names), views: slices.Clone(pv.views)}
	for i, n := range out.names {
		if n == pool {
			out.views[i] = v
			return out
		}
	}
	out.names = append(out.names, pool)
	out.views = append(out.views, v)
	return out
}

// NewMemoryState returns an empty MemoryState. A nil clock is the system clock; a
// triedTTL of zero is DefaultTriedTTL.
func NewMemoryState(clock Clock, triedTTL time.Duration) *MemoryState {
	m := &MemoryState{
		clock:   clock,
		tried:   NewTriedSet(triedTTL),
		windows: make(map[windowKey]*corroborationWindow),
		leases:  make(map[leaseKey]string),
	}
	m.views.Store(&poolViews{})
	return m
}

// View implements State: one atomic load and a scan of the pool names.
func (m *MemoryState) View(pool string) *View { return m.views.Load().get(pool) }

// Tried implements State.
func (m *MemoryState) Tried(_ context.Context, pool, requestID string) []string {
	return m.tried.Get(pool, requestID, now(m.clock))
}

// RecordTried implements State.
func (m *MemoryState) RecordTried(_ context.Context, pool, ref, requestID string) []string {
	return m.tried.Add(pool, requestID, ref, now(m.clock))
}

// Requests is the number of requests whose tried sets are held in memory,
// expired ones not yet dropped included: bounded by the failed-over requests of the
// last two tried-set TTLs that did not end.
func (m *MemoryState) Requests() int { return m.tried.Len() }

// Forget implements State.
func (m *MemoryState) Forget(_ context.Context, pool, requestID string) {
	m.tried.Forget(pool, requestID)
}

// entries is a pool's entries being changed: reads see the published map until
// the first write copies it (dropping retired entries), so an operation that
// changes nothing copies nothing.
type entries struct {
	t    time.Time
	base map[Scope]Entry
	next map[Scope]Entry // nil until the first write
}

func (es *entries) get(s Scope) (Entry, bool) {
	if es.next != nil {
		e, ok := es.next[s]
		return e, ok
	}
	e, ok := es.base[s]
	return e, ok
}

func (es *entries) writable() map[Scope]Entry {
	if es.next == nil {
		es.next = make(map[Scope]Entry, len(es.base)+1)
		for s, e := range es.base {
			if es.t.Before(e.Retires()) {
				es.next[s] = e
			}
		}
	}
	return es.next
}

func (es *entries) set(s Scope, e Entry) { es.writable()[s] = e }

func (es *entries) remove(s Scope) { delete(es.writable(), s) }

// update runs f on pool's entries under the write lock, and publishes a new View
// when f wrote.
func (m *MemoryState) update(pool string, t time.Time, f func(es *entries)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.updateLocked(pool, t, f)
}

func (m *MemoryState) updateLocked(pool string, t time.Time, f func(es *entries)) {
	views := m.views.Load()
	es := &entries{t: t}
	if v := views.get(pool); v != nil {
		es.base = v.Entries
	}
	f(es)
	if es.next == nil {
		return
	}
	for s := range es.base {
		if _, kept := es.next[s]; !kept {
			delete(m.leases, leaseKey{pool, s})
		}
	}
	m.views.Store(views.with(pool, &View{Entries: es.next}))
}

// markLocked applies mark: the later deadline wins; a lengthening mark ends the
// scope's probe lease. It reports whether it changed the cooldown.
func (m *MemoryState) markLocked(pool string, es *entries, mk Mark, t time.Time) bool {
	e, _ := es.get(mk.Scope)
	if !mk.Cooldown.Until.After(e.Until) || !mk.Cooldown.Until.After(t) {
		return false
	}
	es.set(mk.Scope, Entry{Cooldown: mk.Cooldown, Span: mk.Span})
	delete(m.leases, leaseKey{pool, mk.Scope})
	return true
}

// Mark implements State.
func (m *MemoryState) Mark(_ context.Context, pool string, mk Mark) MarkResult {
	t := now(m.clock)
	var res MarkResult
	m.update(pool, t, func(es *entries) {
		res.Changed = m.markLocked(pool, es, mk, t)
		res.Entry, _ = es.get(mk.Scope)
	})
	res.Tried = m.tried.Add(pool, mk.RequestID, mk.Scope.Ref, t)
	return res
}

// Corroborate implements State.
func (m *MemoryState) Corroborate(_ context.Context, pool string, c Corroboration) MarkResult {
	t := now(m.clock)
	var res MarkResult
	m.mu.Lock()
	defer m.mu.Unlock()
	wk := windowKey{pool, c.Scope, c.Class}
	w := m.windows[wk]
	if w == nil {
		if len(m.windows) >= maxWindows {
			m.sweepWindowsLocked(t)
		}
		w = &corroborationWindow{}
		if len(m.windows) < maxWindows {
			m.windows[wk] = w
		} // else: counted for this call only; the failure still fails over
	}
	w.window = c.Window
	var who triedKey
	if c.RequestID != "" {
		who = m.tried.key(pool, c.RequestID)
	} else {
		m.anonymID++
		who = triedKey{m.anonymID, 0}
	}
	w.add(who, t, c.Window, max(c.Quorum, 1))
	res.Agreeing = len(w.seen)
	m.updateLocked(pool, t, func(es *entries) {
		if res.Agreeing >= c.Quorum {
			res.Changed = m.markLocked(pool, es, Mark{Scope: c.Scope, Cooldown: c.Cooldown, Span: c.Span}, t)
			delete(m.windows, wk) // the next cooldown needs a quorum of its own
		}
		res.Entry, _ = es.get(c.Scope)
	})
	if len(w.seen) == 0 {
		delete(m.windows, wk)
	}
	res.Tried = m.tried.Add(pool, c.RequestID, c.Scope.Ref, t)
	return res
}

// sweepWindowsLocked drops the windows whose every request is older than the
// window. m.mu must be held.
func (m *MemoryState) sweepWindowsLocked(t time.Time) {
	for k, w := range m.windows {
		if len(w.seen) == 0 || t.Sub(w.seen[len(w.seen)-1].at) >= w.window {
			delete(m.windows, k)
		}
	}
}

// add counts request at t, forgetting what is older than the window and keeping
// at most quorum requests (the latest): the window can tell whether a quorum
// agrees, and holds no more.
func (w *corroborationWindow) add(request triedKey, t time.Time, window time.Duration, quorum int) {
	kept := w.seen[:0]
	for _, s := range w.seen {
		if s.request != request && t.Sub(s.at) < window {
			kept = append(kept, s)
		}
	}
	kept = append(kept, corroboration{request: request, at: t})
	if len(kept) > quorum {
		kept = kept[len(kept)-quorum:]
	}
	w.seen = kept
}

// AcquireProbe implements State.
func (m *MemoryState) AcquireProbe(_ context.Context, pool string, scope Scope, lease Lease) (ProbeGrant, Entry) {
	t := now(m.clock)
	grant := ProbeNotNeeded
	var out Entry
	m.update(pool, t, func(es *entries) {
		e, ok := es.get(scope)
		out = e
		switch {
		case !ok || e.PhaseAt(t) == PhaseAvailable:
			out = Entry{}
			return
		case e.PhaseAt(t) == PhaseCooling:
			grant = ProbeCooling
			return
		case e.ProbeHeldAt(t):
			grant = ProbeBusy
			return
		}
		e.ProbeUntil = t.Add(lease.TTL)
		es.set(scope, e)
		m.leases[leaseKey{pool, scope}] = lease.Holder
		grant, out = ProbeGranted, e
	})
	return grant, out
}

// EndProbe implements State.
func (m *MemoryState) EndProbe(_ context.Context, pool string, scope Scope, holder string, end ProbeEnd) {
	t := now(m.clock)
	m.update(pool, t, func(es *entries) {
		lk := leaseKey{pool, scope}
		if h, ok := m.leases[lk]; !ok || h != holder {
			return
		}
		delete(m.leases, lk)
		e, ok := es.get(scope)
		switch {
		case !ok:
		case end == ProbeSucceeded && e.PhaseAt(t) != PhaseCooling:
			es.remove(scope)
		default:
			e.ProbeUntil = time.Time{}
			es.set(scope, e)
		}
	})
}

// Override implements State. Memory is the only state there is, so the action is
// never pending.
func (m *MemoryState) Override(_ context.Context, pool, ref string, c Cooldown) error {
	t := now(m.clock)
	m.update(pool, t, func(es *entries) {
		if c != (Cooldown{}) {
			es.set(Scope{Ref: ref}, Entry{Cooldown: c, Span: c.Until.Sub(t)})
			delete(m.leases, leaseKey{pool, Scope{Ref: ref}})
			return
		}
		next := es.writable()
		for s := range next {
			if s.Ref == ref {
				delete(next, s)
				delete(m.leases, leaseKey{pool, s})
			}
		}
	})
	return nil
}
