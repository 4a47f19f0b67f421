package standin

import (
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// healthCheckConfig is a cluster's gRPC health check (HealthCheck with
// grpc_health_check), resolved with Envoy's defaults.
type healthCheckConfig struct {
	timeout                  time.Duration
	interval                 time.Duration
	unhealthyInterval        time.Duration
	unhealthyEdgeInterval    time.Duration
	healthyEdgeInterval      time.Duration
	noTrafficInterval        time.Duration
	noTrafficHealthyInterval time.Duration
	unhealthyThreshold       uint32
	healthyThreshold         uint32
	serviceName              string
	authority                string
}

func buildHealthCheck(where string, hc *corev3.HealthCheck) (*healthCheckConfig, error) {
	// Jitter fields are accepted and not applied: they only spread check times.
	if err := onlyFields(where, hc, "timeout", "interval", "unhealthy_threshold", "healthy_threshold", "grpc_health_check",
		"no_traffic_interval", "no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
		"healthy_edge_interval", "initial_jitter", "interval_jitter", "interval_jitter_percent", "reuse_connection",
		"event_log_path", "always_log_health_check_failures", "always_log_health_check_success"); err != nil {
		return nil, err
	}
	g := hc.GetGrpcHealthCheck()
	if g == nil {
		return nil, fmt.Errorf("%s: %w: only grpc_health_check", where, ErrUnsupported)
	}
	if err := onlyFields(where+" grpc_health_check", g, "service_name", "authority"); err != nil {
		return nil, err
	}
	c := &healthCheckConfig{
		timeout:            hc.GetTimeout().AsDuration(),
		interval:           hc.GetInterval().AsDuration(),
		unhealthyThreshold: hc.GetUnhealthyThreshold().GetValue(),
		healthyThreshold:   hc.GetHealthyThreshold().GetValue(),
		serviceName:        g.GetServiceName(),
		authority:          g.GetAuthority(),
	}
	c.unhealthyInterval = durationOr(hc.GetUnhealthyInterval(), c.interval)
	c.unhealthyEdgeInterval = durationOr(hc.GetUnhealthyEdgeInterval(), c.unhealthyInterval)
	c.healthyEdgeInterval = durationOr(hc.GetHealthyEdgeInterval(), c.interval)
	c.noTrafficInterval = durationOr(hc.GetNoTrafficInterval(), defaultNoTrafficHCEvery)
	c.noTrafficHealthyInterval = durationOr(hc.GetNoTrafficHealthyInterval(), c.noTrafficInterval)
	if c.timeout <= 0 || c.interval <= 0 {
		return nil, fmt.Errorf("%s: timeout and interval must be positive", where)
	}
	return c, nil
}

// nextInterval is HealthCheckerImplBase::interval: a cluster that never carried
// traffic is checked every no_traffic_interval (60s by default); afterwards healthy
// hosts every interval and unhealthy ones every unhealthy_interval, with the edge
// intervals right after a state change.
func (c *healthCheckConfig) nextInterval(hadTraffic, healthy, changed bool) time.Duration {
	switch {
	case !hadTraffic && healthy:
		return c.noTrafficHealthyInterval
	case !hadTraffic:
		return c.noTrafficInterval
	case healthy && changed:
		return c.healthyEdgeInterval
	case healthy:
		return c.interval
	case changed:
		return c.unhealthyEdgeInterval
	}
	return c.unhealthyInterval
}
