package redisstate

import (
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
// pool's change sequence number: the highest one wins, whatever the order in
// which they reach this replica, so a late reply cannot undo a newer change
// (an operator's enable, say). A sequence is only comparable within one epoch
// of the pool in Redis; across epochs (Redis lost its data) marks merge by the
// later deadline until a resync rebuilds the pool.
type view struct {
	requestTTL time.Duration

	// snap is what Cooldown reads: a copy of the active cooldowns, replaced after
	// every change, so that the hot path never takes a lock.
	snap atomic.Pointer[map[poolKey]keypool.Cooldown]

	mu        sync.RWMutex // protects the fields below
	pools     map[string]*poolView
	tried     map[requestKey]*triedKeys
	lastSweep time.Time
}

type poolView struct {
	// epoch is the pool's epoch in Redis at the last resync; empty before the first.
	epoch   string
	entries map[string]entry
}

type entry struct {
	c keypool.Cooldown
	// seq is the change in Redis that set c; 0 when Redis never confirmed it.
	seq int64
	// pending marks a failure recorded while Redis was unreachable: the next resync
	// pushes it, so the other replicas learn it too.
	pending bool
}

type poolKey struct{ pool, ref string }

type requestKey struct{ pool, requestID string }

type triedKeys struct {
	refs    []string
	expires time.Time
}

func newView(requestTTL time.Duration) *view {
	return &view{
		requestTTL: requestTTL,
		pools:      make(map[string]*poolView),
		tried:      make(map[requestKey]*triedKeys),
	}
}

// cooldown is the hot path: one atomic load and one map lookup, no lock, no
// allocation.
func (v *view) cooldown(pool, ref string) keypool.Cooldown {
	if m := v.snap.Load(); m != nil {
		return (*m)[poolKey{pool, ref}]
	}
	return keypool.Cooldown{}
}

// publishLocked replaces the snapshot cooldown reads. Every change to the
// entries must call it before releasing v.mu. Its cost is linear in the keys with
// a state, paid by failures and retries, never by a first attempt.
func (v *view) publishLocked() {
	n := 0
	for _, pv := range v.pools {
		n += len(pv.entries)
	}
	m := make(map[poolKey]keypool.Cooldown, n)
	for pool, pv := range v.pools {
		for ref, e := range pv.entries {
			if e.c != (keypool.Cooldown{}) {
				m[poolKey{pool, ref}] = e.c
			}
		}
	}
	v.snap.Store(&m)
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

// sameEpoch reports whether state read from Redis in epoch belongs to the epoch
// this replica last synchronised the pool in. Before the first resync of a pool
// every epoch is accepted. An empty epoch is a Redis without the pool's state.
func (pv *poolView) sameEpoch(epoch string) bool {
	return pv.epoch == "" || pv.epoch == epoch
}

// applyLocked records a key's state read from Redis. It returns false when the
// update comes from another epoch than the view's: the caller should resync.
// v.mu must be held for writing, and publishLocked called before releasing it.
func (v *view) applyLocked(pool, ref string, s stored, epoch string) bool {
	pv := v.poolLocked(pool)
	e, ok := pv.entries[ref]
	switch {
	case !pv.sameEpoch(epoch):
		// Sequences of two epochs do not compare: keep the later deadline.
		e.c = e.c.Longer(s.c)
		pv.entries[ref] = e
		return false
	case e.pending:
		// A local mark Redis may not hold yet stays until a resync pushes it.
		e.c = e.c.Longer(s.c)
		e.seq = max(e.seq, s.seq)
		pv.entries[ref] = e
	case !ok || s.seq > e.seq:
		pv.entries[ref] = entry{c: s.c, seq: s.seq}
	}
	return true
}

// forgetLocked drops the key's state when Redis no longer holds it (expired,
// enabled, or never set) and the view's entry is not newer than Redis's sequence
// seq at the time of the read. v.mu must be held for writing, and publishLocked
// called before releasing it.
func (v *view) forgetLocked(pool, ref string, seq int64) {
	pv := v.pools[pool]
	if pv == nil {
		return
	}
	if e, ok := pv.entries[ref]; ok && !e.pending && e.seq <= seq {
		delete(pv.entries, ref)
	}
}

// markLocal records a failure Redis did not store: the later deadline wins and
// the entry waits for the next resync to reach Redis.
func (v *view) markLocal(pool, ref string, c keypool.Cooldown) keypool.Cooldown {
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.publishLocked()
	pv := v.poolLocked(pool)
	e := pv.entries[ref]
	e.c = e.c.Longer(c)
	e.pending = true
	pv.entries[ref] = e
	return e.c
}

// recordTried adds ref to the request's tried keys, kept locally whether or not
// Redis stores them too: attempts that reach this replica during an outage still
// never reuse a key.
// It also sweeps expired state now and then.
func (v *view) recordTried(pool, ref, requestID string, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sweepLocked(now) {
		v.publishLocked()
	}
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

// pushEntry is a mark offered to Redis by a resync.
type pushEntry struct {
	ref     string
	c       keypool.Cooldown
	pending bool
}

// poolNames lists the pools the view knows.
func (v *view) poolNames() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make([]string, 0, len(v.pools))
	for name := range v.pools {
		out = append(out, name)
	}
	return out
}

// toPush lists the pool's unexpired marks for a resync, and the epoch the view
// last synchronised the pool in.
func (v *view) toPush(pool string, now time.Time) (string, []pushEntry) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	pv := v.pools[pool]
	if pv == nil {
		return "", nil
	}
	var out []pushEntry
	for ref, e := range pv.entries {
		if e.c.ActiveAt(now) {
			out = append(out, pushEntry{ref: ref, c: e.c, pending: e.pending})
		}
	}
	return pv.epoch, out
}

// resynced replaces the pool's view by what a resync read from Redis (read, at
// sequence seq, in epoch). Marks pushed by the resync are no longer pending when
// Redis now holds them; a local mark made since stays pending. When Redis lost
// the pool's state (lost) the sequences restart, so the pool is rebuilt from the
// read, which holds the union the resync pushed.
func (v *view) resynced(pool, epoch string, lost bool, seq int64, read map[string]stored, pushed []pushEntry) {
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.publishLocked()
	pv := v.poolLocked(pool)
	rebuild := lost || !pv.sameEpoch(epoch)
	pushedUntil := make(map[string]time.Time, len(pushed))
	for _, p := range pushed {
		pushedUntil[p.ref] = p.c.Until
	}
	for ref, e := range pv.entries {
		if !e.pending {
			continue
		}
		if until, ok := pushedUntil[ref]; ok && !e.c.Until.After(until) {
			e.pending = false
			e.seq = 0
			pv.entries[ref] = e
		}
	}
	for ref, e := range pv.entries {
		_, inRedis := read[ref]
		switch {
		case e.pending:
		case rebuild:
			delete(pv.entries, ref)
		case !inRedis && e.seq <= seq:
			delete(pv.entries, ref)
		}
	}
	pv.epoch = epoch
	for ref, s := range read {
		v.applyLocked(pool, ref, s, epoch)
	}
}

// sweepGrace keeps an ended cooldown a little while, so that a late, older
// update cannot bring it back.
const sweepGrace = time.Minute

// sweepLocked forgets expired requests and ended cooldowns, at most twice per
// request TTL, so memory stays bounded by the traffic of the last TTL. v.mu must
// be held for writing. It reports whether it ran.
func (v *view) sweepLocked(now time.Time) bool {
	if now.Sub(v.lastSweep) < v.requestTTL/2 {
		return false
	}
	v.lastSweep = now
	for k, tk := range v.tried {
		if !now.Before(tk.expires) {
			delete(v.tried, k)
		}
	}
	for _, pv := range v.pools {
		for ref, e := range pv.entries {
			if !e.c.ActiveAt(now.Add(-sweepGrace)) {
				delete(pv.entries, ref)
			}
		}
	}
	return true
}
