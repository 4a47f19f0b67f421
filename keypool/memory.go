package keypool

import (
	"context"
	"slices"
	"sync"
	"time"
)

// MemoryState keeps key state in process memory: the embedded default for a single
// replica. It is safe for concurrent use.
type MemoryState struct {
	clock      Clock
	requestTTL time.Duration

	mu        sync.RWMutex // protects the fields below
	cooldowns map[stateKey]Cooldown
	tried     map[requestKey]*triedKeys
	lastSweep time.Time
}

type stateKey struct{ pool, ref string }

type requestKey struct{ pool, requestID string }

type triedKeys struct {
	refs    []string
	expires time.Time
}

// NewMemoryState returns an empty MemoryState. A nil clock is the system clock; a
// requestTTL of zero is DefaultRequestTTL.
func NewMemoryState(clock Clock, requestTTL time.Duration) *MemoryState {
	if requestTTL <= 0 {
		requestTTL = DefaultRequestTTL
	}
	return &MemoryState{
		clock:      clock,
		requestTTL: requestTTL,
		cooldowns:  make(map[stateKey]Cooldown),
		tried:      make(map[requestKey]*triedKeys),
	}
}

// Cooldown implements State.
func (m *MemoryState) Cooldown(pool, ref string) Cooldown {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cooldowns[stateKey{pool, ref}]
}

// RequestView implements State. Memory is authoritative, so this is the local view.
func (m *MemoryState) RequestView(_ context.Context, pool string, refs []string, requestID string) RequestView {
	t := now(m.clock)
	m.mu.RLock()
	defer m.mu.RUnlock()
	view := RequestView{Cooldowns: make(map[string]Cooldown, len(refs))}
	for _, ref := range refs {
		if c, ok := m.cooldowns[stateKey{pool, ref}]; ok {
			view.Cooldowns[ref] = c
		}
	}
	if tk, ok := m.tried[requestKey{pool, requestID}]; ok && requestID != "" && t.Before(tk.expires) {
		view.Tried = slices.Clone(tk.refs)
	}
	return view
}

// MarkFailed implements State.
func (m *MemoryState) MarkFailed(_ context.Context, pool, ref, requestID string, c Cooldown) Cooldown {
	t := now(m.clock)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(t)
	k := stateKey{pool, ref}
	merged := m.cooldowns[k].Longer(c)
	m.cooldowns[k] = merged
	if requestID != "" {
		m.recordTriedLocked(requestKey{pool, requestID}, ref, t)
	}
	return merged
}

// Override implements State.
func (m *MemoryState) Override(_ context.Context, pool, ref string, c Cooldown) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := stateKey{pool, ref}
	if c == (Cooldown{}) {
		delete(m.cooldowns, k)
		return nil
	}
	m.cooldowns[k] = c
	return nil
}

// recordTriedLocked adds ref to the request's tried keys. m.mu must be held.
func (m *MemoryState) recordTriedLocked(k requestKey, ref string, t time.Time) {
	tk, ok := m.tried[k]
	if !ok || !t.Before(tk.expires) {
		tk = &triedKeys{}
		m.tried[k] = tk
	}
	if !slices.Contains(tk.refs, ref) {
		tk.refs = append(tk.refs, ref)
	}
	tk.expires = t.Add(m.requestTTL)
}

// sweepLocked forgets expired requests and cooldowns, at most twice per request TTL,
// so memory stays bounded by the traffic of the last TTL. m.mu must be held.
func (m *MemoryState) sweepLocked(t time.Time) {
	if t.Sub(m.lastSweep) < m.requestTTL/2 {
		return
	}
	m.lastSweep = t
	for k, tk := range m.tried {
		if !t.Before(tk.expires) {
			delete(m.tried, k)
		}
	}
	for k, c := range m.cooldowns {
		if !c.ActiveAt(t) {
			delete(m.cooldowns, k)
		}
	}
}
