package admin

import (
	"github.com/prometheus/client_golang/prometheus"
)

// KeyStateCollector exports each key's state at scrape time, read from the pools'
// local view, so the numbers are never stale and cost nothing between scrapes.
type KeyStateCollector struct {
	pools     []Pool
	available *prometheus.Desc
	remaining *prometheus.Desc
}

// NewKeyStateCollector returns a collector over pools.
func NewKeyStateCollector(pools []Pool) *KeyStateCollector {
	return &KeyStateCollector{
		pools: pools,
		available: prometheus.NewDesc("envoy_keypool_key_available",
			"1 when the key may serve, 0 while it cools down or is disabled.", []string{"pool", "key"}, nil),
		remaining: prometheus.NewDesc("envoy_keypool_key_cooldown_seconds",
			"Seconds until a cooling key returns, by the reason it cools down for.", []string{"pool", "key", "reason"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *KeyStateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.available
	ch <- c.remaining
}

// Collect implements prometheus.Collector.
func (c *KeyStateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.pools {
		now := p.Pool.Now()
		for _, s := range p.Pool.Status() {
			avail := 0.0
			if s.Available(now) {
				avail = 1
			} else {
				ch <- prometheus.MustNewConstMetric(c.remaining, prometheus.GaugeValue,
					s.Cooldown.Until.Sub(now).Seconds(), p.Pool.Name(), s.Key.ID(), string(s.Cooldown.Reason))
			}
			ch <- prometheus.MustNewConstMetric(c.available, prometheus.GaugeValue, avail, p.Pool.Name(), s.Key.ID())
		}
	}
}
