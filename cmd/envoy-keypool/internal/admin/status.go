package admin

import (
	"embed"
	"html/template"
	"math"
	"net/http"
	"time"

	"cdr.dev/slog/v3"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// ProcessInfo is what a replica says of itself on /status and /v1/status.
type ProcessInfo struct {
	// Version is the build's version.
	Version string `json:"version"`
	// StateBackend is "memory" or "redis".
	StateBackend string `json:"state_backend"`
	// Started is when the process started serving.
	Started time.Time `json:"started"`
	// ConfigLoaded is when the configuration in service was loaded.
	ConfigLoaded time.Time `json:"config_loaded"`
	// LastReloadError is why the last reload was refused; "" when it was applied
	// (or there was none).
	LastReloadError string `json:"last_reload_error,omitempty"`
}

// LastStatus is the last upstream status this replica saw for a key.
type LastStatus struct {
	Code int       `json:"code"`
	At   time.Time `json:"at"`
}

// The states a key is shown in.
const (
	stateAvailable = "available"
	stateCooling   = "cooling"
	stateProbing   = "probing"
	stateDisabled  = "disabled"
)

// StatusKey is one key on the status page and in /v1/status: what /metrics exports
// of it, and never its value or hint.
type StatusKey struct {
	Priority int    `json:"priority"`
	ID       string `json:"id"`
	State    string `json:"state"`
	Reason   string `json:"reason,omitempty"`
	// Until and SecondsLeft say when a cooling key returns.
	Until       *time.Time  `json:"until,omitempty"`
	SecondsLeft float64     `json:"seconds_left,omitempty"`
	LastStatus  *LastStatus `json:"last_status,omitempty"`
	// Models are the models the key has a state of its own for (cooling or probing
	// for one model while serving the others), as "model: state".
	Models []string `json:"models,omitempty"`
}

// StatusPool is one pool on the status page and in /v1/status.
type StatusPool struct {
	Name      string      `json:"name"`
	Provider  string      `json:"provider"`
	Available int         `json:"available"`
	Keys      []StatusKey `json:"keys"`
}

// Status is the whole status of a replica.
type Status struct {
	ProcessInfo
	// Readiness is ready, degraded or draining, as /readyz says; Reason says why
	// when degraded.
	Readiness string       `json:"readiness"`
	Reason    string       `json:"reason,omitempty"`
	Now       time.Time    `json:"now"`
	Pools     []StatusPool `json:"pools"`
}

func (h *Handler) status() Status {
	v := Status{Now: h.opts.Clock.Now().UTC(), Readiness: "ready"}
	if h.opts.Info != nil {
		v.ProcessInfo = h.opts.Info()
	}
	switch err := h.opts.Ready(); {
	case h.opts.Draining():
		v.Readiness = "draining"
	case err != nil:
		v.Readiness, v.Reason = "degraded", err.Error()
	}
	v.Pools = make([]StatusPool, 0, len(h.opts.Pools))
	for _, p := range h.opts.Pools {
		sp := StatusPool{Name: p.Pool.Name(), Provider: p.Provider, Keys: []StatusKey{}}
		now := p.Pool.Now()
		for i, s := range p.Pool.Status() {
			k := StatusKey{Priority: i + 1, ID: s.Key.ID(), State: stateAvailable}
			switch {
			case s.Phase == keypool.PhaseProbing:
				// The cooldown ended; one request at a time tries the key again.
				k.State, k.Reason = stateProbing, string(s.Reason)
			case !s.Available(now):
				until := s.Cooldown.Until.UTC()
				k.State, k.Reason, k.Until = stateCooling, string(s.Cooldown.Reason), &until
				if s.Cooldown.Reason == keypool.ReasonDisabled {
					k.State = stateDisabled
				}
				k.SecondsLeft = math.Ceil(until.Sub(now).Seconds())
			default:
				sp.Available++
			}
			for _, m := range s.Models {
				state := stateCooling
				if m.Phase == keypool.PhaseProbing {
					state = stateProbing
				}
				k.Models = append(k.Models, m.Model+": "+state)
			}
			if h.opts.LastStatus != nil {
				if ls, ok := h.opts.LastStatus(sp.Name, k.ID); ok {
					k.LastStatus = &ls
				}
			}
			sp.Keys = append(sp.Keys, k)
		}
		v.Pools = append(v.Pools, sp)
	}
	return v
}

// apiStatus: GET /v1/status, the replica and its pools for `envoy-keypool status`.
func (h *Handler) apiStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, h.status())
}

//go:embed status.html
var statusFiles embed.FS

var statusTemplate = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"left": func(seconds float64) string { return (time.Duration(seconds) * time.Second).String() },
	"ago": func(now, t time.Time) string {
		return now.Sub(t).Truncate(time.Second).String() + " ago"
	},
	"utc": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
}).ParseFS(statusFiles, "status.html"))

// statusPage: GET /status, the read-only page for people. It shows what /metrics
// exports (pool names, key ids, their state) and is open like /metrics; it never
// shows a key value or hint. It refreshes itself and runs no script.
func (h *Handler) statusPage(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	if err := statusTemplate.Execute(w, h.status()); err != nil {
		h.opts.Logger.Warn(r.Context(), "status page: render failed", slog.Error(err))
	}
}
