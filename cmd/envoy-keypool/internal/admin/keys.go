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

// keyView is one key in the key API.
type keyView struct {
	ID        string     `json:"id"`
	Hint      string     `json:"hint"`
	Available bool       `json:"available"`
	Reason    string     `json:"reason,omitempty"`
	Until     *time.Time `json:"cooling_until,omitempty"`
	Remaining float64    `json:"cooling_seconds_remaining,omitempty"`
}

type poolView struct {
	Name     string    `json:"name"`
	Provider string    `json:"provider"`
	Keys     []keyView `json:"keys"`
}

func viewKeys(p *keypool.Pool) []keyView {
	now := p.Now()
	out := []keyView{}
	for _, s := range p.Status() {
		v := keyView{ID: s.Key.ID(), Hint: s.Key.Hint(), Available: s.Available(now)}
		if !v.Available {
			until := s.Cooldown.Until.UTC()
			v.Reason, v.Until = string(s.Cooldown.Reason), &until
			v.Remaining = math.Ceil(until.Sub(now).Seconds())
		}
		out = append(out, v)
	}
	return out
}

// listKeys: GET /v1/keys, every pool's keys in priority order with their state in
// this replica's view.
func (h *Handler) listKeys(w http.ResponseWriter, _ *http.Request) {
	pools := make([]poolView, 0, len(h.opts.Pools))
	for _, p := range h.opts.Pools {
		pools = append(pools, poolView{Name: p.Pool.Name(), Provider: p.Provider, Keys: viewKeys(p.Pool)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"pools": pools})
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
	code, status, ok := h.keyActionResult(w, err)
	if !ok {
		return
	}
	h.opts.Logger.Info(r.Context(), "key disabled by an operator", slog.F("pool", p.Name()), slog.F("key", keyID),
		slog.F("until", c.Until), slog.F("status", status))
	writeJSON(w, code, map[string]any{"pool": p.Name(), "status": status, "keys": viewKeys(p)})
}

// enableKey: POST /v1/pools/{pool}/keys/{key}/enable, returning the key to rotation
// now, whatever cooled it down.
func (h *Handler) enableKey(w http.ResponseWriter, r *http.Request) {
	p, ok := h.pool(w, r)
	if !ok {
		return
	}
	keyID := r.PathValue("key")
	code, status, ok := h.keyActionResult(w, p.Enable(r.Context(), keyID))
	if !ok {
		return
	}
	h.opts.Logger.Info(r.Context(), "key enabled by an operator", slog.F("pool", p.Name()), slog.F("key", keyID),
		slog.F("status", status))
	writeJSON(w, code, map[string]any{"pool": p.Name(), "status": status, "keys": viewKeys(p)})
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

// Statuses of a key action's answer.
const (
	// actionApplied: every replica sharing the state has the change (200).
	actionApplied = "applied"
	// actionPending: this replica applied the change at once, but the shared state
	// (Redis) is unreachable; it reaches the other replicas when Redis returns
	// (202).
	actionPending = "applied_on_this_replica_pending_propagation"
)

// keyActionResult is the HTTP status and the "status" field of a key action's
// answer; ok is false after it answered an error itself.
func (h *Handler) keyActionResult(w http.ResponseWriter, err error) (code int, status string, ok bool) {
	switch {
	case err == nil:
		return http.StatusOK, actionApplied, true
	case errors.Is(err, keypool.ErrPending):
		return http.StatusAccepted, actionPending, true
	case errors.Is(err, keypool.ErrUnknownKey):
		writeError(w, http.StatusNotFound, err.Error())
	default:
		writeError(w, http.StatusServiceUnavailable, "the change did not reach the shared state: "+err.Error())
	}
	return 0, "", false
}
