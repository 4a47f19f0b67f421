package standin

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// hcFailure classifies a failed check as health_checker_impl.cc does: a network
// failure (connect error, timeout, reset) counts towards unhealthy_threshold; an
// active failure (the server answered, but not SERVING) marks the host unhealthy at
// once.
type hcFailure int

const (
	hcOK hcFailure = iota
	hcNetwork
	hcActive
)

// hostHealth is the active health-check state of one host (ActiveHealthCheckSession).
type hostHealth struct {
	first      bool
	numHealthy uint32
	numFailed  uint32
}

// record applies one check result and reports whether the host changed state.
func (s *hostHealth) record(h *host, cfg *healthCheckConfig, r hcFailure) (changed bool) {
	healthy := h.healthy.Load()
	if r == hcOK {
		s.numFailed = 0
		if !healthy {
			// The very first success makes a host healthy at once, for a faster start.
			s.numHealthy++
			if s.first || s.numHealthy >= cfg.healthyThreshold {
				h.healthy.Store(true)
				changed = true
			}
		}
	} else {
		s.numHealthy = 0
		if healthy {
			s.numFailed++
			if r == hcActive || s.numFailed >= cfg.unhealthyThreshold {
				h.healthy.Store(false)
				changed = true
			}
		}
	}
	s.first = false
	return changed
}

// runHealthChecks checks h until ctx ends. firstDone is closed after the first check,
// which Start waits for, as Envoy waits for the first round before a cluster is warm.
func (p *Proxy) runHealthChecks(ctx context.Context, c *upstreamCluster, h *host, firstDone chan<- struct{}) {
	cfg := c.cfg.health
	state := &hostHealth{first: true}
	for {
		r := p.checkOnce(ctx, c, h)
		if ctx.Err() != nil {
			if firstDone != nil {
				close(firstDone)
			}
			return
		}
		changed := state.record(h, cfg, r)
		if changed {
			p.logf("health check: cluster %s host %s is now healthy=%v", c.cfg.name, h.addr, h.healthy.Load())
		}
		p.stats.healthChecks.Add(1)
		if firstDone != nil {
			close(firstDone)
			firstDone = nil
		}
		hadTraffic := c.hadTraffic.Load()
		var trafficStarted <-chan struct{}
		if !hadTraffic {
			trafficStarted = c.trafficStarted
		}
		t := time.NewTimer(cfg.nextInterval(hadTraffic, h.healthy.Load(), changed))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-trafficStarted:
			// First traffic: move from no_traffic_interval to interval now rather than
			// after a minute, as Envoy's next check would.
			t.Stop()
		}
	}
}

// checkOnce runs one grpc.health.v1.Health/Check against h.
func (p *Proxy) checkOnce(ctx context.Context, c *upstreamCluster, h *host) hcFailure {
	conn, err := c.healthConn(h, p.opts)
	if err != nil {
		return hcNetwork
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.health.timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: c.cfg.health.serviceName})
	if err != nil {
		if errors.Is(cctx.Err(), context.DeadlineExceeded) {
			return hcNetwork
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			return hcNetwork
		}
		return hcActive
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return hcActive
	}
	return hcOK
}
