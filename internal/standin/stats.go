package standin

import "sync/atomic"

// Stats are counters a test can read to see what the stand-in did. Names follow the
// Envoy stats they stand for.
type Stats struct {
	Requests             uint64 // downstream_rq_total
	Attempts             uint64 // upstream requests started (first tries and retries)
	Retries              uint64 // upstream_rq_retry
	RetriesOverflow      uint64 // upstream_rq_retry_overflow: refused by the circuit breaker
	RetryLimitExceeded   uint64 // upstream_rq_retry_limit_exceeded
	LocalReplies         uint64 // responses the stand-in or an ext_proc filter wrote
	ExtProcStreams       uint64 // ext_proc streams_started
	ExtProcErrors        uint64 // ext_proc streams_failed and message_timeouts
	ImmediateResponses   uint64 // ext_proc immediate_responses_sent
	RejectedMutations    uint64 // ext_proc rejected_header_mutations
	FailureModeAllowed   uint64 // ext_proc failure_mode_allowed
	HealthChecks         uint64 // health_check.attempt
	RetriesSkippedBuffer uint64 // retries abandoned because the body outgrew the buffer
	PendingOverflow      uint64 // upstream_rq_pending_overflow: max_pending_requests or max_requests refused a stream
	ConnectionOverflow   uint64 // upstream_cx_overflow: max_connections held a stream back
	UpstreamConnResets   uint64 // HTTP/1.1 connections closed because their response was retried
	GrpcRetries          uint64 // retries of gRPC streams (grpc_service.retry_policy)
	ModeOverrides        uint64 // ext_proc mode_override answers applied
}

type counters struct {
	requests, attempts, retries, retriesOverflow, retryLimitExceeded, localReplies atomic.Uint64
	extProcStreams, extProcErrors, immediateResponses, rejectedMutations           atomic.Uint64
	failureModeAllowed, healthChecks, retriesSkippedBuffer                         atomic.Uint64
	pendingOverflow, connectionOverflow, upstreamConnResets, grpcRetries           atomic.Uint64
	modeOverrides                                                                  atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (p *Proxy) Stats() Stats {
	c := &p.stats
	return Stats{
		Requests:             c.requests.Load(),
		Attempts:             c.attempts.Load(),
		Retries:              c.retries.Load(),
		RetriesOverflow:      c.retriesOverflow.Load(),
		RetryLimitExceeded:   c.retryLimitExceeded.Load(),
		LocalReplies:         c.localReplies.Load(),
		ExtProcStreams:       c.extProcStreams.Load(),
		ExtProcErrors:        c.extProcErrors.Load(),
		ImmediateResponses:   c.immediateResponses.Load(),
		RejectedMutations:    c.rejectedMutations.Load(),
		FailureModeAllowed:   c.failureModeAllowed.Load(),
		HealthChecks:         c.healthChecks.Load(),
		RetriesSkippedBuffer: c.retriesSkippedBuffer.Load(),
		PendingOverflow:      c.pendingOverflow.Load(),
		ConnectionOverflow:   c.connectionOverflow.Load(),
		UpstreamConnResets:   c.upstreamConnResets.Load(),
		GrpcRetries:          c.grpcRetries.Load(),
		ModeOverrides:        c.modeOverrides.Load(),
	}
}

// HealthyEndpoints lists the addresses of cluster's endpoints that the health
// checks currently consider healthy (all of them when the cluster has no health
// check), as Envoy's admin /clusters page would show them; nil for an unknown
// cluster.
func (p *Proxy) HealthyEndpoints(cluster string) []string {
	c, ok := p.clusters[cluster]
	if !ok {
		return nil
	}
	var out []string
	for _, h := range c.hosts {
		if h.healthy.Load() {
			out = append(out, h.addr)
		}
	}
	return out
}
