// Package admin is envoy-keypool's admin HTTP API: Prometheus metrics, liveness
// and readiness, a read-only status page, and the key-state API (the replica's
// status, keys with masked hints, disable, enable) guarded by a bearer token. It
// shows key ids and hints, never values; the open endpoints (/metrics, /status)
// show no hint either.
package admin

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"cdr.dev/slog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Pool is a pool as the admin API shows it.
type Pool struct {
	Pool     *keypool.Pool
	Provider string
}

// Options configures NewHandler.
type Options struct {
	// Pools are listed and changed by the key API.
	Pools []Pool
	// Token guards the key API; empty turns the key API off. Default: off.
	Token string
	// Gatherer is served on /metrics. Default: no /metrics.
	Gatherer prometheus.Gatherer
	// Ready reports why the server is degraded, nil when it is not. Default: always ready.
	Ready func() error
	// Draining reports that the process is shutting down: /readyz answers 503.
	// Default: never.
	Draining func() bool
	// Logger records operators' actions. Default: discard.
	Logger slog.Logger
	// Info describes the process on /status and /v1/status. Default: nothing.
	Info func() ProcessInfo
	// StatusPage serves the read-only page /status, without the token. Default off.
	StatusPage bool
	// LastStatus is the last upstream status this replica saw for a key. Default:
	// none shown.
	LastStatus func(pool, keyID string) (LastStatus, bool)
	// Clock tells the time of the status page. Default: the system clock.
	Clock keypool.Clock
}

// Handler serves the admin API. It is immutable: a configuration reload builds a
// new one.
type Handler struct {
	mux  *http.ServeMux
	opts Options
}

// NewHandler returns the admin API for opts.
func NewHandler(opts Options) *Handler {
	if opts.Ready == nil {
		opts.Ready = func() error { return nil }
	}
	if opts.Clock == nil {
		opts.Clock = keypool.ClockFunc(time.Now)
	}
	if opts.Draining == nil {
		opts.Draining = func() bool { return false }
	}
	h := &Handler{mux: http.NewServeMux(), opts: opts}
	if opts.Gatherer != nil {
		h.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	h.mux.HandleFunc("GET /healthz", h.healthz)
	h.mux.HandleFunc("GET /readyz", h.readyz)
	if opts.StatusPage {
		h.mux.HandleFunc("GET /status", h.statusPage)
	}
	h.mux.HandleFunc("GET /v1/status", h.authorized(h.apiStatus))
	h.mux.HandleFunc("GET /v1/keys", h.authorized(h.listKeys))
	h.mux.HandleFunc("POST /v1/pools/{pool}/keys/{key}/disable", h.authorized(h.disableKey))
	h.mux.HandleFunc("POST /v1/pools/{pool}/keys/{key}/enable", h.authorized(h.enableKey))
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 while the server can serve requests, degraded or not: a
// replica that lost Redis still serves from its local view, and taking every
// replica out of rotation during a Redis outage would turn a degraded pool into an
// outage. The body says "degraded" and why; only draining answers 503.
func (h *Handler) readyz(w http.ResponseWriter, _ *http.Request) {
	if h.opts.Draining() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
		return
	}
	if err := h.opts.Ready(); err != nil {
		writeJSON(w, http.StatusOK, map[string]string{"status": "degraded", "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// authorized guards the key API with the bearer token, compared in constant time.
func (h *Handler) authorized(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h.opts.Token == "" {
			writeError(w, http.StatusForbidden, "the key API is off: set admin.token in the configuration")
			return
		}
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "bearer") || subtle.ConstantTimeCompare([]byte(token), []byte(h.opts.Token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="envoy-keypool admin"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		next(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
