package standin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// extProcFilter is one ext_proc filter instance of one attempt: the upstream filter
// chain is built anew for every attempt, so each attempt opens its own Process()
// stream (router.cc / upstream_request.cc create a new UpstreamRequest per try).
type extProcFilter struct {
	p       *Proxy
	cfg     *extProcConfig
	cluster *upstreamCluster

	stream   *grpcStream
	complete bool // processing_complete_: the filter no longer talks to the server
}

const processMethod = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

func (f *extProcFilter) close() {
	if f.stream != nil {
		f.stream.close()
		f.stream = nil
	}
}

// open starts the Process() stream with the filter's initial_metadata. As in Envoy
// the stream is asynchronous: host selection, the connection, retries of
// grpc_service.retry_policy all happen while the first message waits for its answer,
// so message_timeout covers them (ext_proc.cc onHeaders starts the message timer
// right after openStream, before any connection exists).
func (f *extProcFilter) open(ctx context.Context) {
	f.cluster.markTraffic()
	f.p.stats.extProcStreams.Add(1)
	f.stream = startGrpcStream(ctx, grpcTarget{cluster: f.cluster, authority: f.cfg.authority, metadata: f.cfg.metadata, policy: f.cfg.retry},
		processMethod, func() proto.Message { return &extprocv3.ProcessingResponse{} })
}

// headersToProto is MutationUtils::headersToProto: every header, pseudo-headers
// included, with its value in raw_value, filtered by forward_rules.
func (f *extProcFilter) headersToProto(h *headerMap) *corev3.HeaderMap {
	out := &corev3.HeaderMap{}
	for _, e := range h.entries {
		if !f.cfg.forwarded(e.key) {
			continue
		}
		out.Headers = append(out.Headers, &corev3.HeaderValue{Key: e.key, RawValue: []byte(e.value)})
	}
	return out
}

type phase int

const (
	phaseRequest phase = iota
	phaseResponse
)

// onHeaders runs one header phase: send the headers, wait for the answer within
// message_timeout, apply it. A non-nil localReply is the final answer to the client.
func (f *extProcFilter) onHeaders(ctx context.Context, ph phase, h *headerMap, endOfStream bool) *localReply {
	if f.complete {
		return nil
	}
	if (ph == phaseRequest && !f.cfg.sendReqHeaders) || (ph == phaseResponse && !f.cfg.sendRespHeaders) {
		return nil
	}
	if f.stream == nil {
		f.open(ctx)
	}
	hh := &extprocv3.HttpHeaders{Headers: f.headersToProto(h), EndOfStream: endOfStream}
	req := &extprocv3.ProcessingRequest{}
	if ph == phaseRequest {
		req.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: hh}
	} else {
		req.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: hh}
	}
	if err := f.stream.send(req); err != nil {
		return f.onGrpcError(err)
	}
	timeout := f.cfg.messageTimeout
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			// The request itself ended (client gone or route timeout); the router
			// reports that.
			f.complete = true
			return nil
		case <-timer.C:
			return f.onMessageTimeout()
		case r := <-f.stream.recv:
			if r.err != nil {
				if errors.Is(r.err, io.EOF) {
					// The server closed the stream cleanly: Envoy treats that as
					// "processing complete" and continues without the filter.
					f.complete = true
					return nil
				}
				return f.onGrpcError(r.err)
			}
			msg := r.msg.(*extprocv3.ProcessingResponse)
			if d := msg.GetOverrideMessageTimeout(); d != nil {
				// Honoured only up to max_message_timeout (Filter::onNewTimeout).
				if nt := d.AsDuration(); f.cfg.maxMessageTimeout > 0 && nt <= f.cfg.maxMessageTimeout && nt > 0 {
					timer.Reset(nt)
				}
				continue
			}
			return f.handle(ph, h, msg)
		}
	}
}

func (f *extProcFilter) handle(ph phase, h *headerMap, m *extprocv3.ProcessingResponse) *localReply {
	var hr *extprocv3.HeadersResponse
	switch {
	case ph == phaseRequest && m.GetRequestHeaders() != nil:
		hr = m.GetRequestHeaders()
	case ph == phaseResponse && m.GetResponseHeaders() != nil:
		hr = m.GetResponseHeaders()
	case m.GetImmediateResponse() != nil && !f.cfg.disableImmediate:
		f.complete = true
		f.p.stats.immediateResponses.Add(1)
		return f.p.immediateReply(m.GetImmediateResponse(), f.cfg.checker)
	default:
		// A message out of order (or an immediate response the config disables) is
		// spurious: fail open with failure_mode_allow, else answer status_on_error
		// (Filter::onReceiveMessage, ext_proc_fail_close_spurious_resp).
		f.complete = true
		if f.cfg.failureModeAllow {
			f.p.stats.failureModeAllowed.Add(1)
			return nil
		}
		f.p.stats.extProcErrors.Add(1)
		return filterError(f.cfg.statusOnError, "ext_proc_error_spurious_message")
	}
	cr := hr.GetResponse()
	replacing := cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE
	res, err := applyHeaderMutation(cr.GetHeaderMutation(), h, replacing, f.cfg.checker, f.p.opts.HonourAppendAction)
	f.p.stats.rejectedMutations.Add(uint64(res.rejected))
	if err != nil {
		// A refused mutation always ends in status_on_error, failure_mode_allow or not
		// (Filter::handleErrorResponse).
		f.complete = true
		f.p.stats.extProcErrors.Add(1)
		f.p.logf("ext_proc mutation rejected: %v", err)
		return filterError(f.cfg.statusOnError, "ext_proc_error_mutation")
	}
	return nil
}

// onGrpcError is Filter::onGrpcError: a failed stream answers status_on_error (500 by
// default) unless failure_mode_allow lets the request go on without the filter.
func (f *extProcFilter) onGrpcError(err error) *localReply {
	f.complete = true
	if f.cfg.failureModeAllow {
		f.p.stats.failureModeAllowed.Add(1)
		return nil
	}
	f.p.stats.extProcErrors.Add(1)
	f.p.logf("ext_proc stream failed: %v", err)
	return filterError(f.cfg.statusOnError, fmt.Sprintf("ext_proc_error_gRPC_error_%d", status.Code(err)))
}

// onMessageTimeout is Filter::onMessageTimeout: 504 when the server does not answer
// within message_timeout, unless failure_mode_allow.
func (f *extProcFilter) onMessageTimeout() *localReply {
	f.complete = true
	f.p.stats.extProcErrors.Add(1)
	if f.cfg.failureModeAllow {
		f.p.stats.failureModeAllowed.Add(1)
		return nil
	}
	f.p.logf("ext_proc message timeout after %s", f.cfg.messageTimeout)
	return filterError(504, "ext_proc_error_per-message_timeout_exceeded")
}
