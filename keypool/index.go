package keypool

import (
	"math"
	"math/bits"
	"slices"
	"time"
)

// index is a pool's pick index: what a pick needs, precomputed from one View at
// one time, so that choosing a key costs the same with 5 keys or 1,000 (most of
// them cooling). It is immutable and valid while the State returns the same View
// and until validUntil, the first time at which some scope changes phase on its
// own (a cooldown ends, a probe lease expires, a probing scope retires).
type index struct {
	view *View
	// builtAt and validUntil in unix nanoseconds: two integer comparisons per pick.
	builtAt    int64
	validUntil int64 // math.MaxInt64: no scope changes by itself
	base       *selector
	// models holds a selector for each model with state of its own; a model
	// without is served by base.
	models map[string]*selector
}

func (ix *index) freshAt(t int64) bool { return t >= ix.builtAt && t < ix.validUntil }

// selector is how keys are chosen for one scope view (key-wide, or one model).
type selector struct {
	// tiers are the layout's tiers with their candidates only, empty ones dropped.
	tiers []selTier
	// flags says, per key, whether it is a candidate and which of its scopes must
	// be probed before it serves.
	flags []uint8
	// exhaustion summarises the keys that are not candidates, for the answer when
	// none is left.
	exhaustion exhaustionSummary
	// depletedTier is the first layout tier holding a key that headroom steering
	// took out (reason depleted); math.MaxInt32 when none is.
	depletedTier int32
}

// The flags of a key in a selector.
const (
	flagCandidate  uint8 = 1 << iota // the key may serve (perhaps after a probe)
	flagProbeKey                     // its key-wide scope waits for a probe
	flagProbeModel                   // its model scope waits for a probe
)

const probeFlags = flagProbeKey | flagProbeModel

type selTier struct {
	layoutTier int32
	keys       []int32
	alias      aliasTable // unused when uniform
	uniform    bool
	weights    []uint64 // per entry of keys, for sampling with exclusions
	total      uint64
}

// exhaustionSummary says, of the keys that are no candidates, when the soonest
// returns per kind of reason.
type exhaustionSummary struct {
	candidates int
	soonRetry  bool      // some key returns for a reason other than the provider refusing it
	authFailed bool      // some key was refused by the provider (401, 403)
	soonest    time.Time // the soonest return of any key that is not disabled
}

// keyState is one key's standing in one scope view while an index is built.
type keyState struct {
	candidate bool
	probe     uint8     // probe flags
	returns   time.Time // when a key that is no candidate may serve again
	reason    Reason
	probed    bool // another request probes it: it returns when the probe says so
}

// classify is the standing an entry gives its scope at t, and the earliest time
// after t at which that standing changes by itself (zero: never).
func classify(e Entry, ok bool, probeFlag uint8, t time.Time) (keyState, time.Time) {
	if !ok {
		return keyState{candidate: true}, time.Time{}
	}
	switch e.PhaseAt(t) {
	case PhaseCooling:
		return keyState{returns: e.Until, reason: e.Reason}, e.Until
	case PhaseProbing:
		if e.ProbeHeldAt(t) {
			return keyState{returns: e.ProbeUntil, reason: e.Reason, probed: true}, e.ProbeUntil
		}
		return keyState{candidate: true, probe: probeFlag}, e.Retires()
	}
	return keyState{candidate: true}, time.Time{}
}

// combine is a key's standing when both its key-wide and its model scope apply.
func combine(a, b keyState) keyState {
	switch {
	case a.candidate && b.candidate:
		return keyState{candidate: true, probe: a.probe | b.probe}
	case a.candidate:
		return b
	case b.candidate:
		return a
	case b.returns.After(a.returns):
		return b
	}
	return a
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// buildIndex computes the index of view at t. Its cost is linear in the keys for
// the key-wide selector and for each model with state: paid when the view changes
// or a scope changes phase, never by a pick that finds the index current.
func (p *Pool) buildIndex(view *View, t time.Time) *index {
	ix := &index{view: view, builtAt: t.UnixNano()}
	var validUntil time.Time
	var entries map[Scope]Entry
	if view != nil {
		entries = view.Entries
	}
	n := len(p.keys)
	base := make([]keyState, n)
	byModel := map[string][]keyState{}
	for i, k := range p.keys {
		e, ok := entries[Scope{Ref: k.ref}]
		var next time.Time
		base[i], next = classify(e, ok, flagProbeKey, t)
		validUntil = earliest(validUntil, next)
	}
	for s, e := range entries {
		if s.Model == "" || e.PhaseAt(t) == PhaseAvailable {
			continue
		}
		i, ok := p.byRef[s.Ref]
		if !ok {
			continue // a key this pool no longer has
		}
		st, next := classify(e, true, flagProbeModel, t)
		validUntil = earliest(validUntil, next)
		m := byModel[s.Model]
		if m == nil {
			m = slices.Clone(base)
			byModel[s.Model] = m
		}
		m[i] = combine(base[i], st)
	}
	ix.validUntil = math.MaxInt64
	if !validUntil.IsZero() {
		ix.validUntil = validUntil.UnixNano()
	}
	ix.base = p.newSelector(base)
	if len(byModel) > 0 {
		ix.models = make(map[string]*selector, len(byModel))
		for model, states := range byModel {
			ix.models[model] = p.newSelector(states)
		}
	}
	return ix
}

func (p *Pool) newSelector(states []keyState) *selector {
	s := &selector{flags: make([]uint8, len(states)), depletedTier: math.MaxInt32}
	for i, st := range states {
		if st.reason == ReasonDepleted && !st.candidate {
			s.depletedTier = min(s.depletedTier, p.layout.tierOf[i])
		}
		if st.candidate {
			s.flags[i] = flagCandidate | st.probe
			s.exhaustion.candidates++
			continue
		}
		switch {
		case st.reason == ReasonDisabled && !st.probed:
			// An operator's: not coming back by itself any time soon.
			continue
		case st.reason.authFailure():
			s.exhaustion.authFailed = true
		default:
			s.exhaustion.soonRetry = true
		}
		s.exhaustion.soonest = earliest(s.exhaustion.soonest, st.returns)
	}
	for ti, keys := range p.layout.tiers {
		var cands []int32
		for _, k := range keys {
			if s.flags[k]&flagCandidate != 0 {
				cands = append(cands, k)
			}
		}
		if len(cands) == 0 {
			continue
		}
		st := selTier{layoutTier: int32(ti), keys: cands, uniform: p.layout.uniform[ti] || len(cands) == 1}
		st.weights = make([]uint64, len(cands))
		for j, k := range cands {
			st.weights[j] = p.layout.weights[k]
			st.total += st.weights[j]
		}
		if !st.uniform {
			st.alias = newAliasTable(st.weights)
		}
		s.tiers = append(s.tiers, st)
	}
	return s
}

// choose returns a candidate that is not in excluded, or false when none is left:
// the first tier that has one, and inside it a key drawn by weight. With nothing
// excluded it costs one draw; each excluded key costs a little more, never a walk
// over the pool.
func (s *selector) choose(p *Pool, excluded []int32) (int32, bool) {
	for ti := range s.tiers {
		t := &s.tiers[ti]
		left := len(t.keys)
		for _, k := range excluded {
			if s.flags[k]&flagCandidate != 0 && p.layout.tierOf[k] == t.layoutTier {
				left--
			}
		}
		if left <= 0 {
			continue
		}
		if len(t.keys) == 1 {
			return t.keys[0], true
		}
		// Rejection sampling: a few draws nearly always find a key that is not
		// excluded; when the excluded keys hold most of the tier's weight, one
		// weighted draw over the rest of the tier.
		for range 8 {
			k := t.sample(p.rand())
			if !slices.Contains(excluded, k) {
				return k, true
			}
		}
		return t.sampleExcluding(p.rand(), excluded), true
	}
	return -1, false
}

// hasCandidate reports whether choose would find a key.
func (s *selector) hasCandidate(p *Pool, excluded []int32) bool {
	for ti := range s.tiers {
		t := &s.tiers[ti]
		left := len(t.keys)
		for _, k := range excluded {
			if s.flags[k]&flagCandidate != 0 && p.layout.tierOf[k] == t.layoutTier {
				left--
			}
		}
		if left > 0 {
			return true
		}
	}
	return false
}

func (t *selTier) sample(r uint64) int32 {
	if t.uniform {
		i, _ := bits.Mul64(r, uint64(len(t.keys)))
		return t.keys[i]
	}
	return t.keys[t.alias.sample(r)]
}

// sampleExcluding draws by weight among the tier's keys that are not excluded;
// the caller made sure one is left.
func (t *selTier) sampleExcluding(r uint64, excluded []int32) int32 {
	var total uint64
	for j, k := range t.keys {
		if !slices.Contains(excluded, k) {
			total += t.weights[j]
		}
	}
	target, _ := bits.Mul64(r, total)
	last := int32(-1)
	for j, k := range t.keys {
		if slices.Contains(excluded, k) {
			continue
		}
		last = k
		if target < t.weights[j] {
			return k
		}
		target -= t.weights[j]
	}
	return last
}

// exhausted is the error for a pick that found no key. The retry-after counts
// from t.
func (s *selector) exhausted(p *Pool, t time.Time, model string) *ExhaustedError {
	ex := s.exhaustion
	err := &ExhaustedError{Pool: p.name, Keys: len(p.keys), Model: model}
	switch {
	case ex.candidates > 0 || ex.soonRetry:
		// A candidate left only because this request tried it (or lost its
		// probe to another request) serves a new request now.
		err.Kind = ExhaustedRateLimited
		wait := time.Duration(0)
		if ex.candidates == 0 {
			wait = ex.soonest.Sub(t)
		}
		err.RetryAfter = retryAfterSeconds(wait)
	case ex.authFailed:
		err.Kind = ExhaustedAuthFailed
	default:
		err.Kind = ExhaustedUnavailable
	}
	return err
}
