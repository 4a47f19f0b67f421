package admin

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"

	"cdr.dev/slog/v3"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// KeyView is one key in the key API: its key-wide state, the models for which it has
// state of its own, and the last key failure this replica saw.
type KeyView struct {
	ID   string `json:"id"`
	Hint string `json:"hint"`
	// Available: the key serves requests for models without state of their own.
	Available bool `json:"available"`
	ScopeView
	Models      []ScopeView  `json:"models,omitempty"`
	LastFailure *LastFailure `json:"last_failure,omitempty"`
}

// ScopeView is the state of a key for every model (Model empty) or for one model.
type ScopeView struct {
	Model string `json:"model,omitempty"`
	// Phase is available, cooling, or probing (the cooldown ended and one request
	// at a time tries the key).
	Phase  string     `json:"phase"`
	Reason string     `json:"reason,omitempty"`
	Until  *time.Time `json:"cooling_until,omitempty"`
	// Remaining is the seconds until the cooldown ends, while cooling.
	Remaining float64 `json:"cooling_seconds_remaining,omitempty"`
	// Span is the cooldown's length; a failed probe doubles it.
	Span float64 `json:"cooldown_seconds,omitempty"`
	// ProbeUntil is when the probe in flight times out, while one is.
	ProbeUntil *time.Time `json:"probe_until,omitempty"`
}

// LastFailure is the last key failure this replica saw of a key.
type LastFailure struct {
	Class  string    `json:"class"`
	Action string    `json:"action"`
	Status int       `json:"status"`
	Model  string    `json:"model,omitempty"`
	At     time.Time `json:"at"`
}

// PoolView is one pool in the key API, its keys in priority order.
type PoolView struct {
	Name     string    `json:"name"`
	Provider string    `json:"provider"`
	Strategy string    `json:"strategy"`
	Keys     []KeyView `json:"keys"`
}

// KeyListing is what GET /v1/keys answers.
type KeyListing struct {
	Pools []PoolView `json:"pools"`
}

// KeyChange is what a key action answers: the pool's keys after it, and whether
// the change reached the shared state ("done") or waits for it ("pending", with
// Message saying why).
type KeyChange struct {
	Keys        []KeyView `json:"keys"`
	Message     string    `json:"message,omitempty"`
	Pool        string    `json:"pool"`
	Propagation string    `json:"propagation"`
}

// State is how a key is shown: its phase, a disabled key named as such.
func (k KeyView) State() string {
	switch {
	case k.Phase == keypool.PhaseProbing.String():
		return stateProbing
	case k.Available:
		return stateAvailable
	case k.Reason == string(keypool.ReasonDisabled):
		return stateDisabled
	}
	return stateCooling
}

func viewKeys(p *keypool.Pool) []KeyView {
	now := p.Now()
	out := []KeyView{}
	for _, s := range p.Status() {
		v := KeyView{ID: s.Key.ID(), Hint: s.Key.Hint(), Available: s.Available(now), ScopeView: viewScope(s.ScopeStatus, now)}
		for _, m := range s.Models {
			v.Models = append(v.Models, viewScope(m, now))
		}
		if f := s.LastFailure; f != nil {
			v.LastFailure = &LastFailure{Class: string(f.Class), Action: string(f.Action), Status: f.Status,
				Model: f.Model, At: f.At.UTC()}
		}
		out = append(out, v)
	}
	return out
}

func viewScope(s keypool.ScopeStatus, now time.Time) ScopeView {
	v := ScopeView{Model: s.Model, Phase: s.Phase.String()}
	if s.Phase == keypool.PhaseAvailable {
		return v
	}
	v.Reason = string(s.Reason)
	v.Span = s.Span.Seconds()
	if s.Phase == keypool.PhaseCooling {
		until := s.Until.UTC()
		v.Until = &until
		v.Remaining = math.Ceil(until.Sub(now).Seconds())
	}
	if !s.ProbeUntil.IsZero() {
		pu := s.ProbeUntil.UTC()
		v.ProbeUntil = &pu
	}
	return v
}

// listKeys: GET /v1/keys, every pool's keys in priority order with their state in
// this replica's view.
func (h *Handler) listKeys(w http.ResponseWriter, _ *http.Request) {
	pools := make([]PoolView, 0, len(h.opts.Pools))
	for _, p := range h.opts.Pools {
		pools = append(pools, PoolView{Name: p.Pool.Name(), Provider: p.Provider, Strategy: string(p.Pool.Strategy()),
			Keys: viewKeys(p.Pool)})
	}
	writeJSON(w, http.StatusOK, KeyListing{Pools: pools})
}

// disableKey: POST /v1/pools/{pool}/keys/{key}/disable[?for=DURATION], taking the
// key out of rotation on every replica sharing the state (until enabled, or for
// the given duration).
func (h *Handler) disableKey(w http.ResponseWriter, r *http.Request) {
	p, ok := h.pool(w, r)
	if !ok {
		return
	}
	var d time.Duration
	if s := r.URL.Query().Get("for"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("for=%q is not a positive duration such as 30m", s))
			return
		}
	}
	keyID := r.PathValue("key")
	c, err := p.Disable(r.Context(), keyID, d)
	if h.keyActionFailed(w, err) {
		return
	}
	h.opts.Logger.Info(r.Context(), "key disabled by an operator", slog.F("pool", p.Name()), slog.F("key", keyID),
		slog.F("until", c.Until), slog.F("pending_propagation", err != nil))
	h.keyActionDone(w, p, err)
}

// enableKey: POST /v1/pools/{pool}/keys/{key}/enable, returning the key to rotation
// now, for every model, whatever cooled it down.
func (h *Handler) enableKey(w http.ResponseWriter, r *http.Request) {
	p, ok := h.pool(w, r)
	if !ok {
		return
	}
	keyID := r.PathValue("key")
	err := p.Enable(r.Context(), keyID)
	if h.keyActionFailed(w, err) {
		return
	}
	h.opts.Logger.Info(r.Context(), "key enabled by an operator", slog.F("pool", p.Name()), slog.F("key", keyID),
		slog.F("pending_propagation", err != nil))
	h.keyActionDone(w, p, err)
}

func (h *Handler) pool(w http.ResponseWriter, r *http.Request) (*keypool.Pool, bool) {
	name := r.PathValue("pool")
	for _, p := range h.opts.Pools {
		if p.Pool.Name() == name {
			return p.Pool, true
		}
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("no pool named %q", name))
	return nil, false
}

// keyActionFailed answers a key action that was not applied at all; false when it
// was (on this replica at least).
func (h *Handler) keyActionFailed(w http.ResponseWriter, err error) bool {
	switch {
	case err == nil, errors.Is(err, keypool.ErrPending):
		return false
	case errors.Is(err, keypool.ErrUnknownKey):
		writeError(w, http.StatusNotFound, err.Error())
	default:
		writeError(w, http.StatusServiceUnavailable, "the change was not applied: "+err.Error())
	}
	return true
}

// keyActionDone answers an applied key action: 200 when every replica sharing the
// state sees it, 202 when it applies on this replica and reaches the shared state
// (and the other replicas) only when it is reachable again.
func (h *Handler) keyActionDone(w http.ResponseWriter, p *keypool.Pool, err error) {
	body := KeyChange{Pool: p.Name(), Keys: viewKeys(p), Propagation: "done"}
	status := http.StatusOK
	if err != nil {
		status = http.StatusAccepted
		body.Propagation = "pending"
		body.Message = "applied on this replica; the shared state is unreachable, the change reaches it (and the other replicas) when it returns: " + err.Error()
	}
	writeJSON(w, status, body)
}
