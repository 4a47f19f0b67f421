package redisstate

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"cdr.dev/slog/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrUnavailable is wrapped by the errors of Ready and Override while Redis cannot
// be reached.
var ErrUnavailable = errors.New("redis unreachable")

// link states.
const (
	linkStarting int32 = iota
	linkUp
	linkDown
)

// When a Redis that answers is declared unreachable. One slow call is not an
// outage: a call past its timeout now and then (a GC pause, a slow fork for a
// snapshot, a busy network) costs that request the timeout and nothing more.
// Calls stop only on evidence: outageAfter failures in a row, or
// outageFailures of the last outageWindow calls (a link that loses every
// other call never has three in a row but costs half the requests a timeout).
// A lost change subscription is evidence at once: it has its own connection,
// health-checked with a PING, and gives up only after a whole interval without
// an answer.
const (
	outageAfter    = 3
	outageWindow   = 20 // at most 32: the window is a bit set
	outageFailures = 10
)

// health tracks whether Redis is reachable. It logs on transitions only: an
// outage is one line when it starts and one when it ends, never one per request.
type health struct {
	log     slog.Logger
	metrics *metrics

	state atomic.Int32 // linkStarting, linkUp or linkDown

	mu          sync.Mutex // protects the fields below
	consecutive int        // failed calls since the last success
	window      uint32     // outcomes of the last outageWindow calls, newest in bit 0; 1 = failed
	lastErr     error
	since       time.Time // when the current state began
}

// up reports whether request paths may call Redis.
func (h *health) up() bool { return h.state.Load() == linkUp }

// succeeded records a call Redis answered.
func (h *health) succeeded() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.consecutive = 0
	h.window = (h.window << 1) & (1<<outageWindow - 1)
}

// failed records a failed Redis call. While Redis is up, it is declared
// unreachable only when the failures are more than an occasional slow call
// (see outageAfter); otherwise the next call tries Redis again.
func (h *health) failed(ctx context.Context, op string, err error) {
	h.metrics.errors.WithLabelValues(op).Inc()
	h.mu.Lock()
	h.consecutive++
	h.window = (h.window<<1 | 1) & (1<<outageWindow - 1)
	outage := h.consecutive >= outageAfter || bits.OnesCount32(h.window) >= outageFailures
	h.lastErr = err
	h.mu.Unlock()
	if outage || !h.up() {
		h.down(ctx, op, err)
	}
}

// lost records that the change subscription broke or Redis refused a
// resynchronisation: Redis is unreachable from now on.
func (h *health) lost(ctx context.Context, op string, err error) {
	h.metrics.errors.WithLabelValues(op).Inc()
	h.mu.Lock()
	h.lastErr = err
	h.mu.Unlock()
	h.down(ctx, op, err)
}

func (h *health) down(ctx context.Context, op string, err error) {
	prev := h.state.Swap(linkDown)
	if prev == linkDown {
		return
	}
	h.mu.Lock()
	h.since = time.Now()
	h.mu.Unlock()
	h.metrics.up.Set(0)
	h.log.Warn(ctx, "redis unreachable: serving key state from this replica's local view until it returns",
		slog.F("op", op), slog.Error(err))
}

// recovered records a completed resynchronisation with Redis.
func (h *health) recovered(ctx context.Context, pools, pushed int) {
	h.mu.Lock()
	h.consecutive, h.window = 0, 0
	h.mu.Unlock()
	prev := h.state.Swap(linkUp)
	if prev == linkUp {
		return
	}
	h.mu.Lock()
	outage := time.Since(h.since)
	h.since = time.Now()
	h.lastErr = nil
	h.mu.Unlock()
	h.metrics.up.Set(1)
	if prev == linkDown {
		h.log.Info(ctx, "redis reachable again: key state resynchronised",
			slog.F("outage", outage.Round(time.Millisecond).String()), slog.F("pools", pools), slog.F("marks_pushed", pushed))
		return
	}
	h.log.Debug(ctx, "redis connected: key state synchronised", slog.F("pools", pools))
}

// ready is nil while Redis is reachable, else an error wrapping ErrUnavailable
// that says since when and why.
func (h *health) ready() error {
	switch h.state.Load() {
	case linkUp:
		return nil
	case linkStarting:
		return fmt.Errorf("redisstate: not synchronised with redis yet: %w", ErrUnavailable)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Errorf("redisstate: serving from the local view since %s: %w: %w",
		h.since.UTC().Format(time.RFC3339), ErrUnavailable, h.lastErr)
}

// metrics are the State's Prometheus collectors.
type metrics struct {
	up            prometheus.Gauge
	errors        *prometheus.CounterVec
	notifications prometheus.Counter
	resyncs       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "envoy_keypool_redis_up",
			Help: "1 while this replica reaches Redis and its key state is synchronised, 0 while it serves from its local view.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_redis_errors_total",
			Help: "Failed Redis calls, by operation (mark, corroborate, tried, probe, override, forget, sync, check, subscribe).",
		}, []string{"op"}),
		notifications: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "envoy_keypool_redis_notifications_total",
			Help: "Key state changes received from Redis on the change channel.",
		}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "envoy_keypool_redis_resyncs_total",
			Help: "Completed full resynchronisations of the local view with Redis (startup, after an outage or a lost notification).",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.up, m.errors, m.notifications, m.resyncs} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("redisstate: register metrics: %w", err)
		}
	}
	return m, nil
}

// holdOff remembers, per pool, until when the request path skips Redis after
// one of the pool's calls failed: a message that makes several calls (a
// retry's read of its tried set, then a probe lease) waits on a failing Redis
// once, not once per call, and so stays within Envoy's ext_proc
// message_timeout. It is not an outage (nothing is logged, Ready stays nil):
// the calls skipped answer from the local view, and the next call after the
// hold-off tries Redis again. On a Cluster it keeps one dead master's pools
// off Redis while the others' calls go on. Time is the monotonic clock: this
// is about I/O, not about cooldowns. The zero value is ready.
type holdOff struct {
	mu    sync.Mutex // protects until
	until map[string]time.Time
}

func (h *holdOff) active(pool string, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	u, ok := h.until[pool]
	if ok && !now.Before(u) {
		delete(h.until, pool)
		return false
	}
	return ok
}

func (h *holdOff) set(pool string, until time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.until == nil {
		h.until = make(map[string]time.Time)
	}
	h.until[pool] = until
}
