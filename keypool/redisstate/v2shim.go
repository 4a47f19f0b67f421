package redisstate

// This file is a temporary bridge from keypool.State v2 to this package's v1
// methods, written by the domain engineer so that the module compiles and serves
// while the redis engineer implements v2 for real; it is meant to be deleted then.
// Its shortcuts: model scopes are stored under the ref "<ref>@<model>"; probe
// leases and corroboration counts are this replica's only; spans are not stored
// (a failed probe cools for the reason's duration, without doubling); Forget
// leaves the tried set to its TTL; Override is v1's: an enable clears the
// key-wide scope only (model scopes run out), and an outage is an error, not a
// *keypool.PendingError.

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

type v2shim struct {
	cache atomic.Pointer[shimViews]
	gen   atomic.Uint64 // bumped when a lease changes

	mu      sync.Mutex // protects the fields below
	leases  map[poolScope]shimLease
	windows map[shimWindowKey][]shimSeen
}

type shimViews struct {
	snap  *map[poolKey]keypool.Cooldown
	gen   uint64
	views map[string]*keypool.View
}

type poolScope struct {
	pool  string
	scope keypool.Scope
}

type shimLease struct {
	holder string
	until  time.Time
}

type shimWindowKey struct {
	pool  string
	scope keypool.Scope
	class keypool.Class
}

type shimSeen struct {
	request string
	at      time.Time
}

func shimRef(s keypool.Scope) string {
	if s.Model == "" {
		return s.Ref
	}
	return s.Ref + "@" + s.Model
}

func shimScope(ref string) keypool.Scope {
	r, m, _ := strings.Cut(ref, "@")
	return keypool.Scope{Ref: r, Model: m}
}

// View implements keypool.State from the local view, rebuilt only when it changed.
func (s *State) View(pool string) *keypool.View {
	snap := s.view.snap.Load()
	gen := s.shim.gen.Load()
	if c := s.shim.cache.Load(); c != nil && c.snap == snap && c.gen == gen {
		return c.views[pool]
	}
	s.shim.mu.Lock()
	defer s.shim.mu.Unlock()
	c := &shimViews{snap: snap, gen: s.shim.gen.Load(), views: map[string]*keypool.View{}}
	if snap != nil {
		for pk, cd := range *snap {
			v := c.views[pk.pool]
			if v == nil {
				v = &keypool.View{Entries: map[keypool.Scope]keypool.Entry{}}
				c.views[pk.pool] = v
			}
			sc := shimScope(pk.ref)
			e := keypool.Entry{Cooldown: cd}
			if l, ok := s.shim.leases[poolScope{pk.pool, sc}]; ok {
				e.ProbeUntil = l.until
			}
			v.Entries[sc] = e
		}
	}
	s.shim.cache.Store(c)
	return c.views[pool]
}

// Tried implements keypool.State with v1's RequestView (one round trip).
func (s *State) Tried(ctx context.Context, pool, requestID string) []string {
	if requestID == "" {
		return nil
	}
	return shimRefs(s.RequestView(ctx, pool, nil, requestID).Tried)
}

func shimRefs(refs []string) []string {
	var out []string
	for _, r := range refs {
		if sc := shimScope(r); !slices.Contains(out, sc.Ref) {
			out = append(out, sc.Ref)
		}
	}
	return out
}

func (s *State) localTried(pool, requestID string) []string {
	if requestID == "" {
		return nil
	}
	s.view.mu.RLock()
	defer s.view.mu.RUnlock()
	return shimRefs(s.view.triedLocked(nil, pool, requestID, s.now()))
}

// Mark implements keypool.State with v1's MarkFailed.
func (s *State) Mark(ctx context.Context, pool string, m keypool.Mark) keypool.MarkResult {
	ref := shimRef(m.Scope)
	before := s.view.cooldown(pool, ref)
	after := s.MarkFailed(ctx, pool, ref, m.RequestID, m.Cooldown)
	res := keypool.MarkResult{Entry: keypool.Entry{Cooldown: after}, Changed: after.Until.After(before.Until)}
	if res.Changed {
		s.shim.mu.Lock()
		delete(s.shim.leases, poolScope{pool, m.Scope})
		s.shim.mu.Unlock()
		s.shim.gen.Add(1)
	}
	res.Tried = s.localTried(pool, m.RequestID)
	return res
}

// RecordTried implements keypool.State with v1's MarkFailed of no cooldown.
func (s *State) RecordTried(ctx context.Context, pool, ref, requestID string) []string {
	if requestID == "" {
		return nil
	}
	s.MarkFailed(ctx, pool, ref, requestID, keypool.Cooldown{})
	return s.localTried(pool, requestID)
}

// Corroborate implements keypool.State, counting this replica's requests only.
func (s *State) Corroborate(ctx context.Context, pool string, c keypool.Corroboration) keypool.MarkResult {
	now := s.now()
	who := c.RequestID
	if who == "" {
		who = newEpoch()
	}
	k := shimWindowKey{pool, c.Scope, c.Class}
	s.shim.mu.Lock()
	if s.shim.windows == nil {
		s.shim.windows = map[shimWindowKey][]shimSeen{}
	}
	var kept []shimSeen
	for _, seen := range s.shim.windows[k] {
		if seen.request != who && now.Sub(seen.at) < c.Window {
			kept = append(kept, seen)
		}
	}
	kept = append(kept, shimSeen{request: who, at: now})
	agreeing := len(kept)
	if agreeing >= c.Quorum {
		delete(s.shim.windows, k)
	} else {
		s.shim.windows[k] = kept
	}
	s.shim.mu.Unlock()
	if agreeing >= c.Quorum {
		res := s.Mark(ctx, pool, keypool.Mark{Scope: c.Scope, Cooldown: c.Cooldown, Span: c.Span, RequestID: c.RequestID})
		res.Agreeing = agreeing
		return res
	}
	e := keypool.Entry{Cooldown: s.view.cooldown(pool, shimRef(c.Scope))}
	return keypool.MarkResult{Entry: e, Tried: s.RecordTried(ctx, pool, c.Scope.Ref, c.RequestID), Agreeing: agreeing}
}

// AcquireProbe implements keypool.State with a lease of this replica's only.
func (s *State) AcquireProbe(_ context.Context, pool string, scope keypool.Scope, lease keypool.Lease) (keypool.ProbeGrant, keypool.Entry) {
	now := s.now()
	c := s.view.cooldown(pool, shimRef(scope))
	e := keypool.Entry{Cooldown: c}
	switch {
	case c == (keypool.Cooldown{}) || e.PhaseAt(now) == keypool.PhaseAvailable:
		return keypool.ProbeNotNeeded, keypool.Entry{}
	case c.ActiveAt(now):
		return keypool.ProbeCooling, e
	}
	s.shim.mu.Lock()
	defer s.shim.mu.Unlock()
	if s.shim.leases == nil {
		s.shim.leases = map[poolScope]shimLease{}
	}
	k := poolScope{pool, scope}
	if l, ok := s.shim.leases[k]; ok && now.Before(l.until) {
		e.ProbeUntil = l.until
		return keypool.ProbeBusy, e
	}
	e.ProbeUntil = now.Add(lease.TTL)
	s.shim.leases[k] = shimLease{holder: lease.Holder, until: e.ProbeUntil}
	s.shim.gen.Add(1)
	return keypool.ProbeGranted, e
}

// EndProbe implements keypool.State; a success clears the scope in Redis.
func (s *State) EndProbe(ctx context.Context, pool string, scope keypool.Scope, holder string, end keypool.ProbeEnd) {
	k := poolScope{pool, scope}
	s.shim.mu.Lock()
	l, ok := s.shim.leases[k]
	if ok && l.holder == holder {
		delete(s.shim.leases, k)
	}
	s.shim.mu.Unlock()
	if !ok || l.holder != holder {
		return
	}
	s.shim.gen.Add(1)
	// v1's Override waits on Redis even while it is unreachable: a request must
	// not, so a probe's success is shared only while Redis is up.
	if end == keypool.ProbeSucceeded && s.Healthy() && !s.view.cooldown(pool, shimRef(scope)).ActiveAt(s.now()) {
		_ = s.Override(ctx, pool, shimRef(scope), keypool.Cooldown{})
	}
}

// Forget implements keypool.State: the tried set's TTL forgets it.
func (s *State) Forget(context.Context, string, string) {}
