package app

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// currentKeyState exports the key state of the snapshot in service; the metrics of
// a removed key disappear with the reload that removed it.
type currentKeyState struct{ cur *atomic.Pointer[snapshot] }

// Describe implements prometheus.Collector. Every snapshot's collector has the same
// descriptions.
func (c currentKeyState) Describe(ch chan<- *prometheus.Desc) { c.cur.Load().collector.Describe(ch) }

// Collect implements prometheus.Collector.
func (c currentKeyState) Collect(ch chan<- prometheus.Metric) { c.cur.Load().collector.Collect(ch) }
