package extproc

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the server does. Labels carry pool names, key ids and closed
// vocabularies (failure classes, actions, exhaustion kinds), never key values and
// never a value a client chooses (a model name, a request id): the number of series
// is bounded by the configuration, whatever the traffic.
type Metrics struct {
	picks      *prometheus.CounterVec
	failures   *prometheus.CounterVec
	exhausted  *prometheus.CounterVec
	byok       *prometheus.CounterVec
	unexpected *prometheus.CounterVec
	bodies     *prometheus.CounterVec
	probes     *prometheus.CounterVec
	depleted   *prometheus.CounterVec
	steered    *prometheus.CounterVec
	attempts   *prometheus.HistogramVec
	duration   *prometheus.HistogramVec
}

// NewMetrics creates the server's metrics and registers them with reg (nil: not
// registered, for tests and for servers without a metrics endpoint).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		picks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_key_injections_total",
			Help: "Upstream attempts that were given a key of a pool.",
		}, []string{"pool", "key"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_key_failures_total",
			Help: "Upstream answers that were a key failure, by failure class and the action the pool's policy took (cool, failover, corroborate).",
		}, []string{"pool", "key", "class", "action"}),
		exhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_exhausted_total",
			Help: "Requests answered by envoy-keypool because no key of the pool was left.",
		}, []string{"pool", "kind"}),
		byok: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_byok_passthrough_total",
			Help: "Requests that carried the client's own credential and passed untouched (byok: allow).",
		}, []string{"pool"}),
		unexpected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_unexpected_messages_total",
			Help: "ext_proc messages answered without action because they were malformed or out of place.",
		}, []string{"kind"}),
		bodies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_error_bodies_total",
			Help: "Failure answers whose class the error body could refine, by what happened: requested (Envoy was asked to buffer it), classified (the body was read), never_sent (Envoy did not send it: decided from the headers after the answer went on), too_large or unknown_size (decided from the headers: asking would risk Envoy's buffer limit), no_body.",
		}, []string{"pool", "result"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_probes_total",
			Help: "Attempts that probed a key whose cooldown had ended, by result: success (the key is back), failure (cooled again, for longer), released (the attempt ended without an answer).",
		}, []string{"pool", "key", "result"}),
		depleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_headroom_depletions_total",
			Help: "Times headroom steering took a key (or a key for one model) out until its limit resets, because a successful answer said no requests or too few tokens were left: the picks it would have served until the reset go to other keys instead of paying a 429.",
		}, []string{"pool"}),
		steered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_headroom_steered_picks_total",
			Help: "Picks that went to another key than the strategy would have chosen first, because headroom steering had that key out: each is a request that did not pay a 429 round trip.",
		}, []string{"pool"}),
		attempts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "envoy_keypool_request_attempts",
			Help:    "Attempts a request took until envoy-keypool saw its answer (a non-failure answer or the pool's exhaustion answer).",
			Buckets: []float64{1, 2, 3, 4, 6, 8, 12, 16},
		}, []string{"pool"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "envoy_keypool_request_duration_seconds",
			Help:    "Time from a request's first attempt to the answer envoy-keypool saw (the provider's response headers, or the exhaustion answer), failovers included.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"pool"}),
	}
	if reg != nil {
		reg.MustRegister(m.picks, m.failures, m.exhausted, m.byok, m.unexpected, m.bodies, m.probes,
			m.depleted, m.steered, m.attempts, m.duration)
	}
	return m
}

// forgetRemoved deletes the series of the pools and keys that were in old and are
// not in cur, so that a reload that removes keys does not keep their series forever.
func (m *Metrics) forgetRemoved(old, cur *targetSet) {
	if old == nil {
		return
	}
	for name, ot := range old.byName {
		ct, kept := cur.byName[name]
		if !kept {
			pool := prometheus.Labels{"pool": name}
			for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
				m.picks, m.failures, m.exhausted, m.byok, m.bodies, m.probes, m.depleted, m.steered, m.attempts, m.duration,
			} {
				v.DeletePartialMatch(pool)
			}
			continue
		}
		for ref, k := range ot.keys {
			if _, ok := ct.keys[ref]; ok {
				continue
			}
			id := k.id
			if ct.hasKeyID(id) {
				continue // the same id with a rotated value: one series
			}
			key := prometheus.Labels{"pool": name, "key": id}
			m.picks.DeletePartialMatch(key)
			m.failures.DeletePartialMatch(key)
			m.probes.DeletePartialMatch(key)
		}
	}
}
