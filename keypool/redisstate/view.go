package redisstate

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// view is this replica's local view of key state: what Cooldown answers without
// I/O, and what every call falls back to while Redis is unreachable.
//
// Updates that come from Redis (script replies, reads, notifications) carry the
// change's sequence number: the highest one wins, whatever the order in which
// they reach this replica, so a late reply cannot undo a newer change (an
// operator's enable, say). Sequence numbers come from the Redis clock, so they
// keep growing across a Redis restart or failover.
type view struct {
	requestTTL time.Duration

	// cells is what Cooldown reads without a lock: one cell per key that ever had
	// a state. A change stores into its key's cell (O(1), whatever the pool
	// size); only a key seen for the first time, or a sweep, copies the map.
	cells atomic.Pointer[map[poolKey]*cell]

	mu        sync.RWMutex // protects the fields below
	pools     map[string]*poolView
	tried     map[requestKey]*triedKeys
	lastSweep time.Time
}

// cell holds one key's published cooldown; nil is available.
type cell struct {
	c atomic.Pointer[keypool.Cooldown]
}

type poolView struct {
	entries map[string]entry
}

// pendingKind says what of an entry Redis has not stored yet.
type pendingKind uint8

const (
	// pendingNone: Redis holds the entry (or a newer state).
	pendingNone pendingKind = iota
	// pendingMark: a failure recorded while Redis was unreachable; a resync pushes
	// it, never shortening, unless an operator replaced the key's state after it.
	pendingMark
	// pendingOverride: an operator's action applied while Redis was unreachable
	// (with any failure recorded since); a resync replaces the key's state with it,
	// unless Redis holds a later operator action, and keeps any later failure.
	pendingOverride
)

type entry struct {
	c keypool.Cooldown
	// seq is the change in Redis that set c; 0 when Redis never confirmed it.
	seq int64
	// at is when (unix ms) the mark or action that decided c was made.
	at int64
	// pending says what a resync must push. For pendingOverride, at is when the
	// operator acted.
	pending pendingKind
}

type poolKey struct{ pool, ref string }

type requestKey struct{ pool, requestID string }

type triedKeys struct {
	refs    []string
	expires time.Time
}

func newView(requestTTL time.Duration) *view {
	v := &view{
		requestTTL: requestTTL,
		pools:      make(map[string]*poolView),
		tried:      make(map[requestKey]*triedKeys),
	}
	v.cells.Store(&map[poolKey]*cell{})
	return v
}

// cooldown is the hot path: two atomic loads and one map lookup, no lock, no
// allocation.
func (v *view) cooldown(pool, ref string) keypool.Cooldown {
	if c := (*v.cells.Load())[poolKey{pool, ref}]; c != nil {
		if p := c.c.Load(); p != nil {
			return *p
		}
	}
	return keypool.Cooldown{}
}

// publishLocked makes c what cooldown answers for the key. v.mu must be held
// for writing (it serialises the writers of cells).
func (v *view) publishLocked(pool, ref string, c keypool.Cooldown) {
	k := poolKey{pool, ref}
	cells := *v.cells.Load()
	cl := cells[k]
	if cl == nil {
		if c == (keypool.Cooldown{}) {
			return
		}
		next := maps.Clone(cells)
		cl = &cell{}
		next[k] = cl
		cl.c.Store(&c)
		v.cells.Store(&next)
		return
	}
	if old := cl.c.Load(); old != nil && *old == c || old == nil && c == (keypool.Cooldown{}) {
		return
	}
	if c == (keypool.Cooldown{}) {
		cl.c.Store(nil)
		return
	}
	cl.c.Store(&c)
}

// putLocked stores the key's entry and publishes its cooldown. v.mu must be
// held for writing.
func (v *view) putLocked(pool, ref string, e entry) {
	v.poolLocked(pool).entries[ref] = e
	v.publishLocked(pool, ref, e.c)
}

// deleteLocked forgets the key's entry. v.mu must be held for writing.
func (v *view) deleteLocked(pool, ref string) {
	if pv := v.pools[pool]; pv != nil {
		delete(pv.entries, ref)
	}
	v.publishLocked(pool, ref, keypool.Cooldown{})
}

// poolLocked returns the pool's view, creating it. v.mu must be held for writing.
func (v *view) poolLocked(pool string) *poolView {
	pv := v.pools[pool]
	if pv == nil {
		pv = &poolView{entries: make(map[string]entry)}
		v.pools[pool] = pv
	}
	return pv
}

// entryLocked returns the key's entry. v.mu must be held.
func (v *view) entryLocked(pool, ref string) (entry, bool) {
	if pv := v.pools[pool]; pv != nil {
		e, ok := pv.entries[ref]
		return e, ok
	}
	return entry{}, false
}

// applyLocked records a key's state read from Redis, unless the view holds a
// newer change. A state Redis has not stored yet (pending) only grows: the
// later deadline wins until a resync pushes it. It reports whether the view
// changed. v.mu must be held for writing.
func (v *view) applyLocked(pool, ref string, s stored) bool {
	e, ok := v.entryLocked(pool, ref)
	switch {
	case ok && e.pending != pendingNone:
		if s.c.Until.After(e.c.Until) {
			e.c, e.at = s.c, s.at
		}
		e.seq = max(e.seq, s.seq)
	case !ok || s.seq > e.seq:
		e = entry{c: s.c, seq: s.seq, at: s.at}
	default:
		return false
	}
	v.putLocked(pool, ref, e)
	return true
}

// lostGrace: a key that Redis lacks while the view holds a cooldown ending
// within this long is taken as expired (the clocks of replicas and Redis differ
// a little), not as a write Redis lost.
const lostGrace = time.Second

// missingLocked handles a key Redis holds nothing for, although it should if
// the view's entry is an active cooldown Redis confirmed: Redis lost it (a
// restart without persistence, a failover to a replica that missed the write).
// The view keeps it and the caller should resync, which pushes it back. An
// operator's enable leaves a tombstone, and an ended cooldown is not active, so
// neither reads as missing. It reports whether a resync is needed. v.mu must be
// held.
func (v *view) missingLocked(pool, ref string, now time.Time) bool {
	e, ok := v.entryLocked(pool, ref)
	return ok && e.pending == pendingNone && e.c.ActiveAt(now.Add(lostGrace))
}

// markLocal records a failure Redis did not store: the later deadline wins and
// the entry waits for the next resync to reach Redis.
func (v *view) markLocal(pool, ref string, c keypool.Cooldown, now time.Time) keypool.Cooldown {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, _ := v.entryLocked(pool, ref)
	if c.Until.After(e.c.Until) {
		e.c, e.at = c, now.UnixMilli()
	}
	if e.pending == pendingNone {
		e.pending = pendingMark
	}
	v.putLocked(pool, ref, e)
	return e.c
}

// overrideLocal applies an operator's action Redis did not store: it replaces
// the key's state at once and waits for the next resync to reach Redis.
func (v *view) overrideLocal(pool, ref string, c keypool.Cooldown, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, _ := v.entryLocked(pool, ref)
	v.putLocked(pool, ref, entry{c: c, seq: e.seq, at: now.UnixMilli(), pending: pendingOverride})
}

// recordTried adds ref to the request's tried keys, kept locally whether or not
// Redis stores them too: attempts that reach this replica during an outage still
// never reuse a key.
// It also sweeps expired state now and then.
func (v *view) recordTried(pool, ref, requestID string, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.sweepLocked(now)
	if requestID == "" {
		return
	}
	k := requestKey{pool, requestID}
	tk, ok := v.tried[k]
	if !ok || !now.Before(tk.expires) {
		tk = &triedKeys{}
		v.tried[k] = tk
	}
	if !slices.Contains(tk.refs, ref) {
		tk.refs = append(tk.refs, ref)
	}
	tk.expires = now.Add(v.requestTTL)
}

// triedLocked appends to dst the refs the request failed with on this replica.
// v.mu must be held.
func (v *view) triedLocked(dst []string, pool, requestID string, now time.Time) []string {
	if requestID == "" {
		return dst
	}
	tk, ok := v.tried[requestKey{pool, requestID}]
	if !ok || !now.Before(tk.expires) {
		return dst
	}
	for _, ref := range tk.refs {
		if !slices.Contains(dst, ref) {
			dst = append(dst, ref)
		}
	}
	return dst
}

// requestViewLocked builds the answer of RequestView from the view. v.mu must be
// held.
func (v *view) requestViewLocked(pool string, refs []string, requestID string, tried []string, now time.Time) keypool.RequestView {
	rv := keypool.RequestView{Cooldowns: make(map[string]keypool.Cooldown, len(refs))}
	if pv := v.pools[pool]; pv != nil {
		for _, ref := range refs {
			if e, ok := pv.entries[ref]; ok && e.c.ActiveAt(now) {
				rv.Cooldowns[ref] = e.c
			}
		}
	}
	rv.Tried = v.triedLocked(tried, pool, requestID, now)
	return rv
}

// localRequestView answers RequestView from the view alone.
func (v *view) localRequestView(pool string, refs []string, requestID string, now time.Time) keypool.RequestView {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.requestViewLocked(pool, refs, requestID, nil, now)
}

// pushEntry is a key a resync reads, and pushes to Redis what the view knows of
// it that Redis may lack.
type pushEntry struct {
	ref string
	e   entry
	// mode tells the sync script what to do (see syncLua): "r" read only, "v" a
	// confirmed mark Redis may have lost, "p" a pending mark, "o" a pending
	// override.
	mode string
}

// poolNames lists the pools the view knows.
func (v *view) poolNames() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return slices.Collect(maps.Keys(v.pools))
}

// toPush lists what a resync of the pool must push or read: every pending
// entry, every confirmed active cooldown (Redis may have lost it), and every
// other key the view holds, to learn its state.
func (v *view) toPush(pool string, now time.Time) []pushEntry {
	v.mu.RLock()
	defer v.mu.RUnlock()
	pv := v.pools[pool]
	if pv == nil {
		return nil
	}
	out := make([]pushEntry, 0, len(pv.entries))
	for ref, e := range pv.entries {
		mode := "r"
		switch {
		case e.pending == pendingMark:
			mode = "p"
		case e.pending == pendingOverride:
			mode = "o"
		case e.c.ActiveAt(now.Add(lostGrace)):
			mode = "v"
		}
		out = append(out, pushEntry{ref: ref, e: e, mode: mode})
	}
	return out
}

// resynced replaces the pool's view by what a resync read from Redis (read, by
// ref; nil when Redis holds nothing for it) after pushing the entries pushed.
// A pushed entry is no longer pending unless it changed during the resync; the
// view then holds what Redis holds, and forgets the keys Redis has nothing for.
func (v *view) resynced(pool string, read map[string]*stored, pushed []pushEntry) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, p := range pushed {
		if e, ok := v.entryLocked(pool, p.ref); ok && e == p.e && e.pending != pendingNone {
			e.pending = pendingNone
			e.seq = 0
			v.putLocked(pool, p.ref, e)
		}
	}
	for ref, s := range read {
		e, ok := v.entryLocked(pool, ref)
		switch {
		case ok && e.pending != pendingNone:
			v.applyLocked(pool, ref, derefStored(s))
		case s == nil:
			if ok {
				v.deleteLocked(pool, ref)
			}
		case !ok || s.seq >= e.seq:
			v.putLocked(pool, ref, entry{c: s.c, seq: s.seq, at: s.at})
		}
	}
}

func derefStored(s *stored) stored {
	if s == nil {
		return stored{}
	}
	return *s
}

// sweepGrace keeps an ended cooldown a little while, so that a late, older
// update cannot bring it back.
const sweepGrace = time.Minute

// sweepLocked forgets expired requests and ended cooldowns, at most twice per
// request TTL, so memory stays bounded by the traffic of the last TTL. v.mu must
// be held for writing.
func (v *view) sweepLocked(now time.Time) {
	if now.Sub(v.lastSweep) < v.requestTTL/2 {
		return
	}
	v.lastSweep = now
	for k, tk := range v.tried {
		if !now.Before(tk.expires) {
			delete(v.tried, k)
		}
	}
	cells := *v.cells.Load()
	next := make(map[poolKey]*cell, len(cells))
	for pool, pv := range v.pools {
		for ref, e := range pv.entries {
			if e.pending == pendingNone && !e.c.ActiveAt(now.Add(-sweepGrace)) {
				delete(pv.entries, ref)
				continue
			}
			k := poolKey{pool, ref}
			if cl := cells[k]; cl != nil {
				next[k] = cl
			}
		}
	}
	if len(next) != len(cells) {
		v.cells.Store(&next)
	}
}
