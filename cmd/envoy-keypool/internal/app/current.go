package app

import (
	"sync/atomic"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// currentExtProc is the registered ext_proc service: each stream is served by the
// snapshot current when it opened, loaded once, with no lock on the way.
type currentExtProc struct {
	extprocv3.UnimplementedExternalProcessorServer
	cur *atomic.Pointer[snapshot]
}

// Process implements extprocv3.ExternalProcessorServer.
func (c currentExtProc) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	return c.cur.Load().ext.Process(stream)
}

// currentKeyState exports the key state of the snapshot in service; the metrics of
// a removed key disappear with the reload that removed it.
type currentKeyState struct{ cur *atomic.Pointer[snapshot] }

// Describe implements prometheus.Collector. Every snapshot's collector has the same
// descriptions.
func (c currentKeyState) Describe(ch chan<- *prometheus.Desc) { c.cur.Load().collector.Describe(ch) }

// Collect implements prometheus.Collector.
func (c currentKeyState) Collect(ch chan<- prometheus.Metric) { c.cur.Load().collector.Collect(ch) }
