package redisstate

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// The published View of a pool is one immutable map (keypool.View), replaced
// whole on every change: a change costs a copy of the pool's scopes with
// state (not of the pool's keys). A change of a few keys copies the previous
// View's map (no hashing of the other entries) and replaces their scopes; a
// View holding a scope that retired is rebuilt without it. Change
// notifications to a large View do not publish one by one: the publisher
// takes every change that arrived while it copied in its next copy, so that a
// burst of N notifications costs a replica far fewer than N copies.

// publishLocked rebuilds the pool's published View from the current entries,
// dropping the scopes that retired. v.mu must be held.
func (v *view) publishLocked(pool string, now time.Time) {
	size := 0
	if prev := v.get(pool); prev != nil {
		size = len(prev.Entries)
	}
	entries := make(map[keypool.Scope]keypool.Entry, size)
	var retires time.Time
	for ref, k := range v.pools[pool] {
		for model, s := range k.scopes {
			if !s.pending && !now.Before(s.e.Retires()) {
				delete(k.scopes, model)
			}
		}
		retires = addScopes(entries, ref, k.snapshot(), now, retires)
	}
	v.retires[pool] = retires
	delete(v.unpublished, pool)
	v.storeLocked(pool, entries)
}

// flushLocked publishes the pool's unpublished changes. v.mu must be held.
func (v *view) flushLocked(pool string, now time.Time) {
	u := v.unpublished[pool]
	if len(u) == 0 {
		return
	}
	prev := v.get(pool)
	if v.rebuildDue(pool, prev, now) {
		v.publishLocked(pool, now)
		return
	}
	entries, retires := updated(prev, v.changesLocked(pool), now, v.retires[pool])
	v.retires[pool] = retires
	delete(v.unpublished, pool)
	v.storeLocked(pool, entries)
}

// rebuildDue reports whether the pool's View must be rebuilt rather than
// updated: there is none yet, or one of its scopes retired.
func (v *view) rebuildDue(pool string, prev *keypool.View, now time.Time) bool {
	r := v.retires[pool]
	return prev == nil || !r.IsZero() && !now.Before(r)
}

// publishLoop is the publisher of the changes notifications made: it runs
// until ctx is done.
func (v *view) publishLoop(ctx context.Context, now func() time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-v.wake:
		}
		v.mu.Lock()
		pools := slices.Collect(maps.Keys(v.unpublished))
		v.mu.Unlock()
		for _, pool := range pools {
			v.publishUnlocked(pool, now())
		}
	}
}

// publishUnlocked publishes the pool's unpublished changes, copying the View
// without holding v.mu, so that the notifications arriving meanwhile are
// applied and wait for the next copy. A View published by someone else
// meanwhile makes it rebuild under the lock instead.
func (v *view) publishUnlocked(pool string, now time.Time) {
	v.mu.Lock()
	prev := v.get(pool)
	if len(v.unpublished[pool]) == 0 || v.rebuildDue(pool, prev, now) {
		v.flushLocked(pool, now)
		v.mu.Unlock()
		return
	}
	changes := v.changesLocked(pool)
	v.publishing[pool] = v.unpublished[pool]
	delete(v.unpublished, pool)
	generation, retires := v.generation[pool], v.retires[pool]
	v.mu.Unlock()

	entries, retires := updated(prev, changes, now, retires)

	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.publishing, pool)
	if v.generation[pool] != generation {
		v.publishLocked(pool, now)
		return
	}
	v.retires[pool] = retires
	v.storeLocked(pool, entries)
}

// change is one key to replace in a View: the scopes it had there, and its
// scopes now.
type change struct {
	ref    string
	old    []string
	scopes []publishedScope
}

type publishedScope struct {
	model   string
	e       keypool.Entry
	pending bool
}

// changesLocked lists the pool's unpublished changes. v.mu must be held.
func (v *view) changesLocked(pool string) []change {
	out := make([]change, 0, len(v.unpublished[pool]))
	for ref, old := range v.unpublished[pool] {
		c := change{ref: ref, old: old}
		if k := v.pools[pool][ref]; k != nil {
			c.scopes = k.snapshot()
		}
		out = append(out, c)
	}
	return out
}

// updated is a copy of prev's entries with the changed keys' scopes replaced,
// and the earlier of retires and their first retirement.
func updated(prev *keypool.View, changes []change, now, retires time.Time) (map[keypool.Scope]keypool.Entry, time.Time) {
	entries := maps.Clone(prev.Entries)
	for _, c := range changes {
		for _, model := range c.old {
			delete(entries, keypool.Scope{Ref: c.ref, Model: model})
		}
		retires = addScopes(entries, c.ref, c.scopes, now, retires)
	}
	return entries, retires
}

// addScopes adds a key's scopes to entries, but those that retired (unless
// pending), and returns the earlier of retires and the first retirement among
// those not pending.
func addScopes(entries map[keypool.Scope]keypool.Entry, ref string, scopes []publishedScope, now, retires time.Time) time.Time {
	for _, s := range scopes {
		r := s.e.Retires()
		if !s.pending && !now.Before(r) {
			continue
		}
		entries[keypool.Scope{Ref: ref, Model: s.model}] = s.e
		if !s.pending && (retires.IsZero() || r.Before(retires)) {
			retires = r
		}
	}
	return retires
}

// snapshot copies the key's scopes. The view's lock must be held.
func (k *localKey) snapshot() []publishedScope {
	out := make([]publishedScope, 0, len(k.scopes))
	for model, s := range k.scopes {
		out = append(out, publishedScope{model: model, e: s.e, pending: s.pending})
	}
	return out
}

// storeLocked publishes entries as the pool's View. v.mu must be held.
func (v *view) storeLocked(pool string, entries map[keypool.Scope]keypool.Entry) {
	next := maps.Clone(*v.published.Load())
	next[pool] = &keypool.View{Entries: entries}
	v.published.Store(&next)
	v.generation[pool]++
}

// noteLocked records that the key is about to change, with the scopes it has
// in the published View, and reports whether it was not recorded already.
// v.mu must be held.
func (v *view) noteLocked(pool, ref string) bool {
	u := v.unpublished[pool]
	if u == nil {
		u = make(map[string][]string)
		v.unpublished[pool] = u
	}
	if _, ok := u[ref]; ok {
		return false
	}
	if old, ok := v.publishing[pool][ref]; ok {
		// The publisher is copying its change: the View still has these.
		u[ref] = old
		return true
	}
	var old []string
	if k := v.pools[pool][ref]; k != nil {
		old = slices.Collect(maps.Keys(k.scopes))
	}
	u[ref] = old
	return true
}

// inFlightLocked reports whether the publisher is copying a change of the
// key: the published View does not show it yet. v.mu must be held.
func (v *view) inFlightLocked(pool, ref string) bool {
	_, ok := v.publishing[pool][ref]
	return ok
}

// unnoteLocked forgets a note that no change followed. v.mu must be held.
func (v *view) unnoteLocked(pool, ref string) {
	delete(v.unpublished[pool], ref)
	if len(v.unpublished[pool]) == 0 {
		delete(v.unpublished, pool)
	}
}
