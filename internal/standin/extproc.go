package standin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// extProcFilter is one ext_proc filter instance of one attempt: the upstream filter
// chain is built anew for every attempt, so each attempt opens its own Process()
// stream (router.cc / upstream_request.cc create a new UpstreamRequest per try).
type extProcFilter struct {
	p       *Proxy
	cfg     *extProcConfig
	cluster *upstreamCluster
	// metadata is the stream's dynamic metadata (the upstream filter manager shares
	// the downstream stream info, upstream_request.cc UpstreamFilterManager).
	metadata *dynamicMetadata
	start    time.Time // the downstream request's start (StreamInfo::startTime)

	stream        *grpcStream
	attrsSent     bool
	mode          *extprocfilterv3.ProcessingMode // this request's mode (mode_override may change it)
	protocolSent  bool
	complete      bool // processing_complete_: the filter no longer talks to the server
	inHeaderState bool // a headers message waits for its answer (inHeaderProcessState)
}

const processMethod = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

func newExtProcFilter(p *Proxy, cfg *extProcConfig, md *dynamicMetadata, start time.Time) *extProcFilter {
	return &extProcFilter{p: p, cfg: cfg, cluster: p.clusters[cfg.cluster], metadata: md, start: start, mode: cfg.mode}
}

// extProcFilterName is the attributes key of ext_proc's messages (FilterName, ext_proc.cc).
const extProcFilterName = "envoy.filters.http.ext_proc"

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

// decorate adds what every message carries: the forwarded dynamic metadata
// (Filter::addDynamicMetadata: metadata_options.forwarding_namespaces, always set,
// empty when nothing matches) and, on the stream's first message, the protocol
// configuration (Filter::encodeProtocolConfig).
func (f *extProcFilter) decorate(req *extprocv3.ProcessingRequest) {
	req.MetadataContext = f.metadata.forward(f.cfg.forwardUntyped, f.cfg.forwardTyped)
	if len(f.cfg.requestAttributes) > 0 && !f.attrsSent && (req.GetRequestHeaders() != nil || req.GetRequestBody() != nil) {
		// Filter::addAttributes: the request attributes go once, with the first request
		// message; a CEL timestamp is printed by absl::FormatTime (RFC 3339, UTC).
		req.Attributes = map[string]*structpb.Struct{extProcFilterName: {Fields: map[string]*structpb.Value{
			"request.time": structpb.NewStringValue(f.start.UTC().Format("2006-01-02T15:04:05.999999999-07:00")),
		}}}
		f.attrsSent = true
	}
	if !f.protocolSent {
		req.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode:                         f.mode.GetRequestBodyMode(),
			ResponseBodyMode:                        f.mode.GetResponseBodyMode(),
			SendBodyWithoutWaitingForHeaderResponse: f.cfg.sendBodyEarly,
		}
		f.protocolSent = true
	}
}

// send sends one message, opening the stream on the first.
func (f *extProcFilter) send(ctx context.Context, req *extprocv3.ProcessingRequest) error {
	if f.stream == nil {
		f.open(ctx)
	}
	f.decorate(req)
	return f.stream.send(req)
}

// await waits for the answer to the message just sent, within message_timeout
// (override_message_timeout may extend it up to max_message_timeout,
// Filter::onNewTimeout). It returns the answer, or a local reply, or neither when the
// filter is done (processing complete, or the request ended).
func (f *extProcFilter) await(ctx context.Context) (*extprocv3.ProcessingResponse, *localReply) {
	timer := time.NewTimer(f.cfg.messageTimeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			// The request itself ended (client gone, route timeout, pool failure);
			// the router reports that.
			f.complete = true
			return nil, nil
		case <-timer.C:
			return nil, f.onMessageTimeout()
		case r := <-f.stream.recv:
			if r.err != nil {
				if errors.Is(r.err, io.EOF) {
					// The server closed the stream with OK: Envoy treats that as
					// "processing complete" and continues without the filter, even with
					// failure_mode_allow false (Filter::onGrpcClose).
					f.complete = true
					return nil, nil
				}
				return nil, f.onGrpcError(r.err)
			}
			msg := r.msg.(*extprocv3.ProcessingResponse)
			if d := msg.GetOverrideMessageTimeout(); d != nil {
				if nt := d.AsDuration(); f.cfg.maxMessageTimeout > 0 && nt <= f.cfg.maxMessageTimeout && nt >= time.Millisecond {
					timer.Reset(nt)
				}
				continue
			}
			return msg, nil
		}
	}
}

// maybeOverrideMode applies a headers answer's mode_override (Filter::onReceiveMessage):
// only with allow_mode_override, without send_body_without_waiting_for_header_response,
// while a headers message is pending, and when the effective mode is in
// allowed_override_modes (every field but request_header_mode compared,
// AllowedOverrideModesSet). The effective mode is the configured one with the
// override's non-DEFAULT header and trailer modes and both of its body modes
// (effectiveModeOverride).
func (f *extProcFilter) maybeOverrideMode(msg *extprocv3.ProcessingResponse) {
	o := msg.GetModeOverride()
	if o == nil || !f.cfg.allowModeOverride || f.cfg.sendBodyEarly || !f.inHeaderState {
		return
	}
	eff := proto.Clone(f.cfg.mode).(*extprocfilterv3.ProcessingMode)
	if o.GetRequestHeaderMode() != extprocfilterv3.ProcessingMode_DEFAULT {
		eff.RequestHeaderMode = o.GetRequestHeaderMode()
	}
	if o.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_DEFAULT {
		eff.ResponseHeaderMode = o.GetResponseHeaderMode()
	}
	if o.GetRequestTrailerMode() != extprocfilterv3.ProcessingMode_DEFAULT {
		eff.RequestTrailerMode = o.GetRequestTrailerMode()
	}
	if o.GetResponseTrailerMode() != extprocfilterv3.ProcessingMode_DEFAULT {
		eff.ResponseTrailerMode = o.GetResponseTrailerMode()
	}
	eff.RequestBodyMode = o.GetRequestBodyMode()
	eff.ResponseBodyMode = o.GetResponseBodyMode()
	for _, a := range f.cfg.allowedOverrides {
		if a.GetResponseHeaderMode() == eff.GetResponseHeaderMode() && a.GetRequestBodyMode() == eff.GetRequestBodyMode() &&
			a.GetResponseBodyMode() == eff.GetResponseBodyMode() && a.GetRequestTrailerMode() == eff.GetRequestTrailerMode() &&
			a.GetResponseTrailerMode() == eff.GetResponseTrailerMode() {
			f.mode = eff
			f.p.stats.modeOverrides.Add(1)
			return
		}
	}
	f.p.logf("ext_proc mode_override %v not in allowed_override_modes: ignored", eff)
}

// wantsResponseBody reports whether the response body goes to the server: the
// (possibly overridden) response_body_mode is BUFFERED and the response has a body
// (ProcessorState::handleHeaderContinue).
func (f *extProcFilter) wantsResponseBody(endOfStream bool) bool {
	return !f.complete && !endOfStream && f.mode.GetResponseBodyMode() == extprocfilterv3.ProcessingMode_BUFFERED
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
	phaseResponseBody
)

// onHeaders runs one header phase: send the headers, wait for the answer within
// message_timeout, apply it. A non-nil localReply is the final answer to the client.
func (f *extProcFilter) onHeaders(ctx context.Context, ph phase, h *headerMap, endOfStream bool) *localReply {
	if f.complete {
		return nil
	}
	if (ph == phaseRequest && f.mode.GetRequestHeaderMode() == extprocfilterv3.ProcessingMode_SKIP) ||
		(ph == phaseResponse && f.mode.GetResponseHeaderMode() == extprocfilterv3.ProcessingMode_SKIP) {
		return nil
	}
	hh := &extprocv3.HttpHeaders{Headers: f.headersToProto(h), EndOfStream: endOfStream}
	req := &extprocv3.ProcessingRequest{}
	if ph == phaseRequest {
		req.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: hh}
	} else {
		req.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: hh}
	}
	if err := f.send(ctx, req); err != nil {
		return f.onGrpcError(err)
	}
	f.inHeaderState = true
	msg, lr := f.await(ctx)
	if msg == nil {
		f.inHeaderState = false
		return lr
	}
	f.maybeOverrideMode(msg)
	f.inHeaderState = false
	return f.handle(ph, h, msg)
}

// onResponseBody sends the buffered response body in one message and applies the
// answer (ProcessorState::handleBufferedBodyCallback in processor_state.cc): its header
// mutation goes to the held response headers (processHeaderMutationIfAvailable), its
// body mutation replaces or clears the body (after checking a content-length against
// the new body, validateContentLength). message_timeout starts when the body is sent
// (sendBodyChunk). It returns the body to forward, or a local reply.
func (f *extProcFilter) onResponseBody(ctx context.Context, h *headerMap, body []byte) ([]byte, *localReply) {
	req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}}
	if err := f.send(ctx, req); err != nil {
		return body, f.onGrpcError(err)
	}
	msg, lr := f.await(ctx)
	if msg == nil {
		return body, lr
	}
	br := msg.GetResponseBody()
	if br == nil {
		return body, f.handle(phaseResponseBody, h, msg)
	}
	cr := br.GetResponse()
	if cr.GetHeaderMutation() != nil {
		res, err := applyHeaderMutation(cr.GetHeaderMutation(), h, false, f.cfg.checker, f.p.opts.HonourAppendAction)
		f.p.stats.rejectedMutations.Add(uint64(res.rejected))
		if err != nil {
			return body, f.mutationError(err)
		}
	}
	if bm := cr.GetBodyMutation(); bm != nil {
		var next []byte
		switch m := bm.GetMutation().(type) {
		case *extprocv3.BodyMutation_Body:
			next = m.Body
		case *extprocv3.BodyMutation_ClearBody:
			if !m.ClearBody {
				next = body
			}
		default:
			next = body
		}
		if cl, ok := h.get("content-length"); ok {
			if n, err := strconv.Atoi(cl); err == nil && n != len(next) {
				return body, f.mutationError(fmt.Errorf("mismatch between content length and the length of the mutated body"))
			}
		}
		body = next
	}
	return body, nil
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
		return f.mutationError(err)
	}
	if replacing {
		// CONTINUE_AND_REPLACE ends the processing of this direction's body
		// (handleHeaderContinueAndReplace: body_mode_ = NONE).
		if ph == phaseResponse && f.mode.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_NONE {
			m := proto.Clone(f.mode).(*extprocfilterv3.ProcessingMode)
			m.ResponseBodyMode = extprocfilterv3.ProcessingMode_NONE
			f.mode = m
		}
	}
	return nil
}

// mutationError: a refused mutation always ends in status_on_error,
// failure_mode_allow or not (Filter::handleErrorResponse).
func (f *extProcFilter) mutationError(err error) *localReply {
	f.complete = true
	f.p.stats.extProcErrors.Add(1)
	f.p.logf("ext_proc mutation rejected: %v", err)
	return filterError(f.cfg.statusOnError, "ext_proc_error_mutation")
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
