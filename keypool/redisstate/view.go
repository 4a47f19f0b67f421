package redisstate

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// view is this replica's local view of key state: what View answers without
// I/O, and what every call falls back to while Redis is unreachable.
//
// Updates that come from Redis (script replies, reads, notifications) carry the
// key's version (the seq of its last change): the highest one wins, whatever the
// order in which they reach this replica, so a late reply cannot undo a newer
// change (an operator's enable, say). Versions come from the Redis clock, so they
// keep growing across a Redis restart or failover.
type view struct {
	// tried holds the tried sets this replica saw, kept whether or not Redis
	// stores them too: attempts that reach this replica during an outage still
	// never reuse a key.
	tried *keypool.TriedSet

	// published is what View reads: one immutable *keypool.View per pool,
	// replaced (copy on write) when the pool changes.
	published atomic.Pointer[map[string]*keypool.View]

	mu      sync.Mutex // protects the fields below
	pools   map[string]map[string]*localKey
	windows map[windowKey][]seen // corroboration while Redis is unreachable
	// confirmed is, per pool, the highest version Redis confirmed to this
	// replica since its last resync of the pool (the pool's seq at that
	// resync, or a later key version): a Redis whose seq is lower lost writes
	// (a restart without persistence, a failover to a replica that missed
	// them), and the replica resynchronises to push them back.
	confirmed map[string]int64
	// retires is, per pool, when the first scope of its published View that
	// is not pending retires (zero: none): until then a change of some keys
	// updates a copy of the View, after it the View is rebuilt without the
	// retired scopes.
	retires map[string]time.Time
	// unpublished holds, per pool, the keys changed since the pool's View was
	// published, each with the scopes it had in that View.
	unpublished map[string]map[string][]string
	// publishing holds, per pool, the changes the publisher is copying.
	publishing map[string]map[string][]string
	// generation counts the Views published per pool: the publisher, which
	// builds a View outside the lock, stores it only if none came meanwhile.
	generation map[string]uint64

	// wake tells the publisher that notifications changed the view.
	wake chan struct{}
}

// localKey is what the view holds of one key.
type localKey struct {
	v      int64 // version in Redis of the state held; 0: none confirmed
	scopes map[string]*localScope
	// ov is an operator's action Redis does not have yet.
	ov *pendingOverride
	// pgen counts the changes Redis does not have: a resync clears the pending
	// marks it pushed only if none came since.
	pgen uint64
}

type localScope struct {
	scopeState
	// pending marks a failure recorded while Redis was unreachable.
	pending bool
}

type pendingOverride struct {
	at int64 // unix ms
	c  keypool.Cooldown
}

type windowKey struct {
	pool  string
	scope keypool.Scope
	class keypool.Class
}

type seen struct {
	member string
	at     time.Time
}

func (k *localKey) hasPending() bool {
	if k.ov != nil {
		return true
	}
	for _, s := range k.scopes {
		if s.pending {
			return true
		}
	}
	return false
}

func newView(triedTTL time.Duration) *view {
	v := &view{
		tried:       keypool.NewTriedSet(triedTTL),
		pools:       make(map[string]map[string]*localKey),
		windows:     make(map[windowKey][]seen),
		confirmed:   make(map[string]int64),
		retires:     make(map[string]time.Time),
		unpublished: make(map[string]map[string][]string),
		publishing:  make(map[string]map[string][]string),
		generation:  make(map[string]uint64),
		wake:        make(chan struct{}, 1),
	}
	v.published.Store(&map[string]*keypool.View{})
	return v
}

// get is the hot path: one atomic load and one map lookup, no lock, no
// allocation.
func (v *view) get(pool string) *keypool.View { return (*v.published.Load())[pool] }

// keyLocked returns the key's entry, creating it. v.mu must be held.
func (v *view) keyLocked(pool, ref string) *localKey {
	keys := v.pools[pool]
	if keys == nil {
		keys = make(map[string]*localKey)
		v.pools[pool] = keys
	}
	k := keys[ref]
	if k == nil {
		k = &localKey{scopes: make(map[string]*localScope)}
		keys[ref] = k
	}
	return k
}

// scopeLocked is the scope's state, nil when it has none. v.mu must be held.
func (v *view) scopeLocked(pool string, scope keypool.Scope) *localScope {
	if k := v.pools[pool][scope.Ref]; k != nil {
		return k.scopes[scope.Model]
	}
	return nil
}

// entryLocked is the scope's entry, zero when it has none. v.mu must be held.
func (v *view) entryLocked(pool string, scope keypool.Scope) keypool.Entry {
	if s := v.scopeLocked(pool, scope); s != nil {
		return s.e
	}
	return keypool.Entry{}
}

// inlinePublication is the size of a View (scopes with state) below which a
// notification publishes the View itself rather than through the publisher.
const inlinePublication = 128

// applyLocked records a key's state read from Redis, unless the view holds a
// newer one. What Redis does not have yet (pending) survives: the later deadline
// wins until a resync pushes it, and a pending enable hides the marks it ended.
// It reports whether the view changed. v.mu must be held; the caller publishes.
func (v *view) applyLocked(pool, ref string, ks keyState) bool {
	v.confirmed[pool] = max(v.confirmed[pool], ks.v)
	k := v.keyLocked(pool, ref)
	if !k.hasPending() {
		if ks.v <= k.v {
			return false
		}
		k.v = ks.v
		k.scopes = make(map[string]*localScope, len(ks.scopes))
		for model, s := range ks.scopes {
			k.scopes[model] = &localScope{scopeState: s}
		}
		return true
	}
	for model, rs := range ks.scopes {
		if k.ov != nil && rs.at < k.ov.at {
			continue // our pending action ends it
		}
		ls := k.scopes[model]
		switch {
		case ls == nil || !ls.pending:
			k.scopes[model] = &localScope{scopeState: rs}
		case rs.e.Until.After(ls.e.Until):
			ls.scopeState = rs
		}
	}
	for model, ls := range k.scopes {
		if _, ok := ks.scopes[model]; !ok && !ls.pending {
			delete(k.scopes, model)
		}
	}
	k.v = max(k.v, ks.v)
	return true
}

// apply is applyLocked followed, when the view changed, by the publication
// of the pool's View before it returns: what a call's reply says is in force
// when the call returns.
func (v *view) apply(pool, ref string, ks keyState, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	fresh := v.noteLocked(pool, ref)
	if !v.applyLocked(pool, ref, ks) && fresh && !v.inFlightLocked(pool, ref) {
		v.unnoteLocked(pool, ref) // the View shows it already
		return
	}
	// What the notification of this change (or an earlier one) left to the
	// publisher is published now too.
	v.flushLocked(pool, now)
}

// applyNotified is applyLocked for a change notification. A small View is
// published at once (its copy costs less than waking the publisher); a large
// one is left to the publisher (publishLoop), which takes the changes of a
// burst in one copy.
func (v *view) applyNotified(pool, ref string, ks keyState, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	noted := v.noteLocked(pool, ref)
	if !v.applyLocked(pool, ref, ks) {
		if noted {
			v.unnoteLocked(pool, ref)
		}
		return
	}
	if pv := v.get(pool); pv == nil || len(pv.Entries) < inlinePublication {
		v.flushLocked(pool, now)
		return
	}
	select {
	case v.wake <- struct{}{}:
	default: // the publisher is awake already
	}
}

// markLocal records a mark Redis did not store, by the rules of
// keypool.State.Mark; the key waits for the next resync to push it.
func (v *view) markLocal(pool string, m keypool.Mark, now time.Time) keypool.MarkResult {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.noteLocked(pool, m.Scope.Ref)
	res := keypool.MarkResult{Changed: v.markLocked(pool, m, now)}
	res.Entry = v.entryLocked(pool, m.Scope)
	v.flushLocked(pool, now)
	return res
}

func (v *view) markLocked(pool string, m keypool.Mark, now time.Time) bool {
	k := v.keyLocked(pool, m.Scope.Ref)
	cur := k.scopes[m.Scope.Model]
	if !m.Cooldown.Until.After(now) || cur != nil && !m.Cooldown.Until.After(cur.e.Until) {
		return false
	}
	k.scopes[m.Scope.Model] = &localScope{
		scopeState: scopeState{e: keypool.Entry{Cooldown: m.Cooldown, Span: m.Span}, at: now.UnixMilli()},
		pending:    true,
	}
	k.pgen++
	return true
}

// corroborateLocal counts a corroboration among the failures this replica saw
// while Redis was unreachable, and marks locally when a quorum agrees.
func (v *view) corroborateLocal(pool string, c keypool.Corroboration, member string, now time.Time) keypool.MarkResult {
	v.mu.Lock()
	defer v.mu.Unlock()
	wk := windowKey{pool, c.Scope, c.Class}
	kept := v.windows[wk][:0]
	for _, s := range v.windows[wk] {
		if s.member != member && now.Sub(s.at) < c.Window {
			kept = append(kept, s)
		}
	}
	kept = append(kept, seen{member: member, at: now})
	res := keypool.MarkResult{Agreeing: len(kept)}
	if len(kept) >= c.Quorum {
		delete(v.windows, wk)
		v.noteLocked(pool, c.Scope.Ref)
		res.Changed = v.markLocked(pool, keypool.Mark{Scope: c.Scope, Cooldown: c.Cooldown, Span: c.Span}, now)
		v.flushLocked(pool, now)
	} else {
		v.windows[wk] = kept
	}
	res.Entry = v.entryLocked(pool, c.Scope)
	return res
}

// overrideLocal applies an operator's action Redis did not store, by the rules
// of keypool.State.Override, and keeps it for the next resync to push.
func (v *view) overrideLocal(pool, ref string, c keypool.Cooldown, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.noteLocked(pool, ref)
	k := v.keyLocked(pool, ref)
	if c.Until.After(now) {
		k.scopes[""] = &localScope{
			scopeState: scopeState{e: keypool.Entry{Cooldown: c, Span: c.Until.Sub(now)}, at: now.UnixMilli()},
			pending:    true,
		}
	} else {
		c = keypool.Cooldown{}
		clear(k.scopes)
	}
	k.ov = &pendingOverride{at: now.UnixMilli(), c: c}
	k.pgen++
	v.flushLocked(pool, now)
}

// acquireLocal grants a probe lease by this replica alone, while Redis is
// unreachable: one probe per replica at a time.
func (v *view) acquireLocal(pool string, scope keypool.Scope, lease keypool.Lease, now time.Time) (keypool.ProbeGrant, keypool.Entry) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.scopeLocked(pool, scope)
	switch {
	case s == nil || s.e.PhaseAt(now) == keypool.PhaseAvailable:
		return keypool.ProbeNotNeeded, keypool.Entry{}
	case s.e.PhaseAt(now) == keypool.PhaseCooling:
		return keypool.ProbeCooling, s.e
	case s.e.ProbeHeldAt(now):
		return keypool.ProbeBusy, s.e
	}
	v.noteLocked(pool, scope.Ref)
	s.e.ProbeUntil, s.holder = now.Add(lease.TTL), lease.Holder
	v.flushLocked(pool, now)
	return keypool.ProbeGranted, s.e
}

// endProbeLocal ends a lease while Redis is unreachable. A success returns the
// scope to service on this replica; Redis keeps its entry, so the others probe
// it once more when it returns.
func (v *view) endProbeLocal(pool string, scope keypool.Scope, holder string, end keypool.ProbeEnd, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.scopeLocked(pool, scope)
	if s == nil || s.holder != holder {
		return
	}
	v.noteLocked(pool, scope.Ref)
	if end == keypool.ProbeSucceeded && s.e.PhaseAt(now) != keypool.PhaseCooling {
		delete(v.pools[pool][scope.Ref].scopes, scope.Model)
	} else {
		s.e.ProbeUntil, s.holder = time.Time{}, ""
	}
	v.flushLocked(pool, now)
}

// pushKey is one key a resync reads, with what the view knows of it that Redis
// may lack.
type pushKey struct {
	ref  string
	vk   int64
	ov   *pendingOverride
	mode string // see syncLua
	// scopes are the pending marks (mode "p") or the confirmed active scopes
	// (mode "v").
	scopes []pushScope
	pgen   uint64
}

type pushScope struct {
	model string
	s     scopeState
}

// confirmedVersions lists, per pool, the highest version Redis confirmed, for
// the pools where Redis confirmed any.
func (v *view) confirmedVersions() map[string]int64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make(map[string]int64, len(v.confirmed))
	for pool, seq := range v.confirmed {
		if seq > 0 {
			out[pool] = seq
		}
	}
	return out
}

// poolNames lists the pools the view knows.
func (v *view) poolNames() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Collect(maps.Keys(v.pools))
}

// toPush lists every key of the pool the view holds, with what a resync must
// push: its pending marks and action, or, for a key whose state Redis
// confirmed and that still has an active scope, that state (Redis may have lost
// it).
func (v *view) toPush(pool string, now time.Time) []pushKey {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]pushKey, 0, len(v.pools[pool]))
	for ref, k := range v.pools[pool] {
		p := pushKey{ref: ref, vk: k.v, ov: k.ov, mode: "r", pgen: k.pgen}
		if k.hasPending() {
			p.mode = "p"
			for model, s := range k.scopes {
				if s.pending {
					p.scopes = append(p.scopes, pushScope{model, s.scopeState})
				}
			}
		} else if k.v > 0 {
			for model, s := range k.scopes {
				if now.Before(s.e.Retires()) {
					p.scopes = append(p.scopes, pushScope{model, s.scopeState})
				}
			}
			if len(p.scopes) > 0 {
				p.mode = "v"
			}
		}
		out = append(out, p)
	}
	return out
}

// resynced replaces the pool's keys by what a resync read from Redis (states,
// by ref; nil when Redis holds nothing for it) after pushing pushed, seq being
// the pool's seq in Redis then. A key's pending state is cleared when the
// resync pushed it and nothing changed since.
func (v *view) resynced(pool string, states map[string]*keyState, pushed []pushKey, seq int64, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	defer func() { v.confirmed[pool] = seq }() // what Redis holds now, lost writes pushed back
	for _, p := range pushed {
		k := v.pools[pool][p.ref]
		if k == nil || k.pgen != p.pgen || !k.hasPending() {
			continue
		}
		k.ov = nil
		for _, s := range k.scopes {
			s.pending = false
		}
		k.v = 0 // Redis's state replaces it below
	}
	for ref, ks := range states {
		switch {
		case ks != nil:
			if k := v.pools[pool][ref]; k != nil && !k.hasPending() && ks.v < k.v {
				k.v = 0 // Redis is authoritative after a resync
			}
			v.applyLocked(pool, ref, *ks)
		case v.pools[pool][ref] != nil && !v.pools[pool][ref].hasPending():
			delete(v.pools[pool], ref)
		}
	}
	v.publishLocked(pool, now)
}
