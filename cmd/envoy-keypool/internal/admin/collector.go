package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// KeyStateCollector exports each key's state at scrape time, read from the pools'
// local view, so the numbers are never stale and cost nothing between scrapes.
//
// Cardinality is bounded by the configuration alone: every series is labelled by
// pool and key id, plus a closed vocabulary (phase, reason). Model names come from
// clients, so they are never a label: per-model state is counted per key and phase.
type KeyStateCollector struct {
	pools     []Pool
	available *prometheus.Desc
	phase     *prometheus.Desc
	remaining *prometheus.Desc
	models    *prometheus.Desc
}

// NewKeyStateCollector returns a collector over pools.
func NewKeyStateCollector(pools []Pool) *KeyStateCollector {
	return &KeyStateCollector{
		pools: pools,
		available: prometheus.NewDesc("envoy_keypool_key_available",
			"1 when the key serves requests (for models without state of their own), 0 while it cools down, is probed or is disabled.",
			[]string{"pool", "key"}, nil),
		phase: prometheus.NewDesc("envoy_keypool_key_phase",
			"1 for the key's key-wide phase: available, cooling, or probing (its cooldown ended and one request at a time tries it).",
			[]string{"pool", "key", "phase"}, nil),
		remaining: prometheus.NewDesc("envoy_keypool_key_cooldown_seconds",
			"Seconds until a key cooling down key-wide returns, by the reason it cools down for.",
			[]string{"pool", "key", "reason"}, nil),
		models: prometheus.NewDesc("envoy_keypool_key_model_scopes",
			"Models for which the key has state of its own (a rate limit per model, headroom spent for one model), by phase.",
			[]string{"pool", "key", "phase"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *KeyStateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.available
	ch <- c.phase
	ch <- c.remaining
	ch <- c.models
}

// phases are the phases reported, in a stable order.
var phases = []keypool.Phase{keypool.PhaseAvailable, keypool.PhaseCooling, keypool.PhaseProbing}

// Collect implements prometheus.Collector.
func (c *KeyStateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.pools {
		now := p.Pool.Now()
		pool := p.Pool.Name()
		for _, s := range p.Pool.Status() {
			id := s.Key.ID()
			avail := 0.0
			if s.Available(now) {
				avail = 1
			}
			ch <- prometheus.MustNewConstMetric(c.available, prometheus.GaugeValue, avail, pool, id)
			for _, ph := range phases {
				v := 0.0
				if s.Phase == ph {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(c.phase, prometheus.GaugeValue, v, pool, id, ph.String())
			}
			if s.Cooldown.ActiveAt(now) {
				ch <- prometheus.MustNewConstMetric(c.remaining, prometheus.GaugeValue,
					s.Cooldown.Until.Sub(now).Seconds(), pool, id, string(s.Cooldown.Reason))
			}
			var cooling, probing int
			for _, m := range s.Models {
				switch m.Phase {
				case keypool.PhaseCooling:
					cooling++
				case keypool.PhaseProbing:
					probing++
				}
			}
			ch <- prometheus.MustNewConstMetric(c.models, prometheus.GaugeValue, float64(cooling), pool, id, keypool.PhaseCooling.String())
			ch <- prometheus.MustNewConstMetric(c.models, prometheus.GaugeValue, float64(probing), pool, id, keypool.PhaseProbing.String())
		}
	}
}
