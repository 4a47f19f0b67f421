package standin

import (
	"context"
	"errors"
	"time"

	"io"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
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

// checkOnce runs one grpc.health.v1.Health/Check against h on the health checker's own
// connection, classified as GrpcActiveHealthCheckSession does
// (extensions/health_checkers/grpc/health_checker_impl.cc): a reset, refused stream,
// connect failure or timeout is a network failure; an answer with a non-OK gRPC status
// or a status other than SERVING is an active failure.
func (p *Proxy) checkOnce(ctx context.Context, c *upstreamCluster, h *host) hcFailure {
	cctx, cancel := context.WithTimeout(ctx, c.cfg.health.timeout)
	defer cancel()
	authority := c.cfg.health.authority
	s := startGrpcStream(cctx, grpcTarget{cluster: c, authority: authority, host: h, pool: c.healthPool(h)},
		"/grpc.health.v1.Health/Check", func() proto.Message { return &healthpb.HealthCheckResponse{} })
	defer s.close()
	_ = s.send(&healthpb.HealthCheckRequest{Service: c.cfg.health.serviceName})
	s.closeSend()
	var resp *healthpb.HealthCheckResponse
	for {
		select {
		case <-cctx.Done():
			return hcNetwork
		case r := <-s.recv:
			switch {
			case r.msg != nil:
				resp = r.msg.(*healthpb.HealthCheckResponse)
				continue
			case errors.Is(r.err, io.EOF):
				if resp == nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					return hcActive
				}
				return hcOK
			case s.answered():
				return hcActive
			}
			return hcNetwork
		}
	}
}
