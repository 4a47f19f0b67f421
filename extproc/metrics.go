package extproc

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the server does. Labels carry pool names and key ids, never
// key values.
type Metrics struct {
	picks      *prometheus.CounterVec
	failures   *prometheus.CounterVec
	exhausted  *prometheus.CounterVec
	byok       *prometheus.CounterVec
	unexpected *prometheus.CounterVec
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
			Help: "Upstream answers that marked a key and asked Envoy to retry with the next one.",
		}, []string{"pool", "key", "reason"}),
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
	}
	if reg != nil {
		reg.MustRegister(m.picks, m.failures, m.exhausted, m.byok, m.unexpected)
	}
	return m
}
