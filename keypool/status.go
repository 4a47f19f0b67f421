package keypool

import (
	"slices"
	"strings"
	"time"
)

// ScopeStatus is what an operator sees of one scope of a key.
type ScopeStatus struct {
	// Model is the scope's model; "" for the key-wide scope.
	Model string
	// Phase is available, cooling or probing.
	Phase Phase
	// Reason is why the scope cools, or cooled before its probe; "" when available.
	Reason Reason
	// Until is when the cooldown ends (ended, when probing); zero when available.
	Until time.Time
	// Span is the cooldown's length; a failed probe doubles it.
	Span time.Duration
	// ProbeUntil is when the probe in flight times out; zero when no probe is.
	ProbeUntil time.Time
}

// KeyStatus is what an operator sees of one key, in this replica's local view.
type KeyStatus struct {
	Key Key
	// ScopeStatus is the key-wide state.
	ScopeStatus
	// Cooldown is the key-wide cooldown in force; zero when the key is available or
	// probing.
	Cooldown Cooldown
	// Models lists the models for which the key has state of its own (cooling or
	// probing), by model name.
	Models []ScopeStatus
	// LastFailure is the last key failure this replica saw on the key; nil when
	// none.
	LastFailure *LastFailure
}

// Available reports whether the key serves requests for any model at t, as far as
// its key-wide state goes (Models may still hold it back for some models).
func (s KeyStatus) Available(t time.Time) bool {
	return !s.Cooldown.ActiveAt(t) && s.Phase != PhaseProbing
}

// Status lists the pool's keys in configuration order with their state in this
// replica's local view.
func (p *Pool) Status() []KeyStatus {
	t := now(p.clock)
	var entries map[Scope]Entry
	if v := p.state.View(p.name); v != nil {
		entries = v.Entries
	}
	out := make([]KeyStatus, len(p.keys))
	for i, k := range p.keys {
		out[i] = KeyStatus{Key: k, LastFailure: p.lastFailure[i].Load()}
		if e, ok := entries[Scope{Ref: k.ref}]; ok {
			out[i].ScopeStatus = scopeStatus("", e, t)
			if out[i].Phase == PhaseCooling {
				out[i].Cooldown = e.Cooldown
			}
		}
	}
	for s, e := range entries {
		i, ok := p.byRef[s.Ref]
		if !ok || s.Model == "" {
			continue
		}
		if st := scopeStatus(s.Model, e, t); st.Phase != PhaseAvailable {
			out[i].Models = append(out[i].Models, st)
		}
	}
	for i := range out {
		slices.SortFunc(out[i].Models, func(a, b ScopeStatus) int { return strings.Compare(a.Model, b.Model) })
	}
	return out
}

func scopeStatus(model string, e Entry, t time.Time) ScopeStatus {
	st := ScopeStatus{Model: model, Phase: e.PhaseAt(t)}
	if st.Phase == PhaseAvailable {
		return st
	}
	st.Reason, st.Until, st.Span = e.Reason, e.Until, e.Span
	if e.ProbeHeldAt(t) {
		st.ProbeUntil = e.ProbeUntil
	}
	return st
}
