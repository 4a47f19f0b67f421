package keypool

import (
	"context"
	"maps"
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

	views atomic.Pointer[map[string]*View] // immutable; replaced by writers

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

// NewMemoryState returns an empty MemoryState. A nil clock is the system clock; a
// triedTTL of zero is DefaultTriedTTL.
func NewMemoryState(clock Clock, triedTTL time.Duration) *MemoryState {
	m := &MemoryState{
		clock:   clock,
		tried:   NewTriedSet(triedTTL),
		windows: make(map[windowKey]*corroborationWindow),
		leases:  make(map[leaseKey]string),
	}
	m.views.Store(&map[string]*View{})
	return m
}

// View implements State: one atomic load and one map lookup.
func (m *MemoryState) View(pool string) *View { return (*m.views.Load())[pool] }

// Tried implements State.
func (m *MemoryState) Tried(_ context.Context, pool, requestID string) []string {
	return m.tried.Get(pool, requestID, now(m.clock))
}

// RecordTried implements State.
func (m *MemoryState) RecordTried(_ context.Context, pool, ref, requestID string) []string {
	return m.tried.Add(pool, requestID, ref, now(m.clock))
}

// Forget implements State.
func (m *MemoryState) Forget(_ context.Context, pool, requestID string) {
	m.tried.Forget(pool, requestID)
}

// update runs f on a copy of pool's entries (retired ones dropped) under the write
// lock, and publishes the copy when f reports a change.
func (m *MemoryState) update(pool string, t time.Time, f func(entries map[Scope]Entry) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.updateLocked(pool, t, f)
}

func (m *MemoryState) updateLocked(pool string, t time.Time, f func(entries map[Scope]Entry) bool) {
	views := *m.views.Load()
	entries := make(map[Scope]Entry)
	retired := false
	if v := views[pool]; v != nil {
		for s, e := range v.Entries {
			if !t.Before(e.Retires()) {
				retired = true
				delete(m.leases, leaseKey{pool, s})
				continue
			}
			entries[s] = e
		}
	}
	if !f(entries) && !retired {
		return
	}
	next := maps.Clone(views)
	next[pool] = &View{Entries: entries}
	m.views.Store(&next)
}

// markLocked applies mark to entries: the later deadline wins; a lengthening mark
// ends the scope's probe lease. It reports whether it changed the cooldown.
func (m *MemoryState) markLocked(pool string, entries map[Scope]Entry, mk Mark, t time.Time) bool {
	e := entries[mk.Scope]
	if !mk.Cooldown.Until.After(e.Until) || !mk.Cooldown.Until.After(t) {
		return false
	}
	entries[mk.Scope] = Entry{Cooldown: mk.Cooldown, Span: mk.Span}
	delete(m.leases, leaseKey{pool, mk.Scope})
	return true
}

// Mark implements State.
func (m *MemoryState) Mark(_ context.Context, pool string, mk Mark) MarkResult {
	t := now(m.clock)
	var res MarkResult
	m.update(pool, t, func(entries map[Scope]Entry) bool {
		res.Changed = m.markLocked(pool, entries, mk, t)
		res.Entry = entries[mk.Scope]
		return res.Changed
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
		m.windows[wk] = w
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
	m.updateLocked(pool, t, func(entries map[Scope]Entry) bool {
		if res.Agreeing >= c.Quorum {
			res.Changed = m.markLocked(pool, entries, Mark{Scope: c.Scope, Cooldown: c.Cooldown, Span: c.Span}, t)
			delete(m.windows, wk) // the next cooldown needs a quorum of its own
		}
		res.Entry = entries[c.Scope]
		return res.Changed
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
	m.update(pool, t, func(entries map[Scope]Entry) bool {
		e, ok := entries[scope]
		out = e
		switch {
		case !ok:
			return false
		case e.PhaseAt(t) == PhaseCooling:
			grant = ProbeCooling
			return false
		case e.ProbeHeldAt(t):
			grant = ProbeBusy
			return false
		}
		e.ProbeUntil = t.Add(lease.TTL)
		entries[scope] = e
		m.leases[leaseKey{pool, scope}] = lease.Holder
		grant, out = ProbeGranted, e
		return true
	})
	return grant, out
}

// EndProbe implements State.
func (m *MemoryState) EndProbe(_ context.Context, pool string, scope Scope, holder string, end ProbeEnd) {
	t := now(m.clock)
	m.update(pool, t, func(entries map[Scope]Entry) bool {
		lk := leaseKey{pool, scope}
		if h, ok := m.leases[lk]; !ok || h != holder {
			return false
		}
		delete(m.leases, lk)
		e, ok := entries[scope]
		switch {
		case !ok:
			return false
		case end == ProbeSucceeded && e.PhaseAt(t) != PhaseCooling:
			delete(entries, scope)
		default:
			e.ProbeUntil = time.Time{}
			entries[scope] = e
		}
		return true
	})
}

// Override implements State. Memory is the only state there is, so the action is
// never pending.
func (m *MemoryState) Override(_ context.Context, pool, ref string, c Cooldown) error {
	t := now(m.clock)
	m.update(pool, t, func(entries map[Scope]Entry) bool {
		if c != (Cooldown{}) {
			entries[Scope{Ref: ref}] = Entry{Cooldown: c, Span: c.Until.Sub(t)}
			delete(m.leases, leaseKey{pool, Scope{Ref: ref}})
			return true
		}
		for s := range entries {
			if s.Ref == ref {
				delete(entries, s)
				delete(m.leases, leaseKey{pool, s})
			}
		}
		return true
	})
	return nil
}
