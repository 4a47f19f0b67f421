package standin

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// answer is what the fake ext_proc server does with one ProcessingRequest.
type answer struct {
	resp *extprocv3.ProcessingResponse // nil with no other field: continue unchanged
	// block makes the server wait, answering nothing, until the stream ends (the
	// stand-in gave up, e.g. on message_timeout).
	block bool
	err   error // end the stream with this gRPC status
	eof   bool  // end the stream cleanly without answering
}

// answerFunc programs the fake: stream is the 0-based index of the Process() stream
// (one per attempt), req the message received on it.
type answerFunc func(stream int, req *extprocv3.ProcessingRequest) answer

// recordedStream is what one Process() stream carried.
type recordedStream struct {
	md       metadata.MD
	requests []*extprocv3.ProcessingRequest
}

// fakeExtProc is a programmable ext_proc gRPC server with a gRPC health service.
type fakeExtProc struct {
	extprocv3.UnimplementedExternalProcessorServer
	addr   string
	health *health.Server

	mu      sync.Mutex // protects the fields below
	answer  answerFunc
	streams []*recordedStream
}

func startFakeExtProc(t *testing.T, fn answerFunc) *fakeExtProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startFakeExtProcOn(t, ln, fn)
}

// startFakeExtProcOn serves the fake on ln (a Unix socket, say) with server options
// (TLS credentials, say).
func startFakeExtProcOn(t *testing.T, ln net.Listener, fn answerFunc, opts ...grpc.ServerOption) *fakeExtProc {
	t.Helper()
	f := &fakeExtProc{addr: ln.Addr().String(), health: health.NewServer(), answer: fn}
	srv := grpc.NewServer(opts...)
	extprocv3.RegisterExternalProcessorServer(srv, f)
	healthpb.RegisterHealthServer(srv, f.health)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakeExtProc) setAnswer(fn answerFunc) {
	f.mu.Lock()
	f.answer = fn
	f.mu.Unlock()
}

func (f *fakeExtProc) setServing(serving bool) {
	st := healthpb.HealthCheckResponse_SERVING
	if !serving {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	f.health.SetServingStatus("", st)
}

// recorded returns a copy of the streams seen so far.
func (f *fakeExtProc) recorded() []recordedStream {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]recordedStream, len(f.streams))
	for i, s := range f.streams {
		out[i] = recordedStream{md: s.md, requests: append([]*extprocv3.ProcessingRequest(nil), s.requests...)}
	}
	return out
}

func (f *fakeExtProc) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	rec := &recordedStream{md: md}
	f.mu.Lock()
	idx := len(f.streams)
	f.streams = append(f.streams, rec)
	f.mu.Unlock()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		f.mu.Lock()
		rec.requests = append(rec.requests, req)
		fn := f.answer
		f.mu.Unlock()
		a := answer{}
		if fn != nil {
			a = fn(idx, req)
		}
		switch {
		case a.block:
			<-stream.Context().Done()
			return stream.Context().Err()
		case a.err != nil:
			return a.err
		case a.eof:
			return nil
		}
		resp := a.resp
		if resp == nil {
			resp = continueResponse(req)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// continueResponse answers a headers message without changes.
func continueResponse(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	return headersResponse(req, &extprocv3.HeaderMutation{})
}

// headersResponse answers a headers message with a mutation.
func headersResponse(req *extprocv3.ProcessingRequest, m *extprocv3.HeaderMutation) *extprocv3.ProcessingResponse {
	hr := &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: m}}
	if req.GetResponseHeaders() != nil {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: hr}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: hr}}
}

// setHeader is a HeaderValueOption as envoy-keypool sends it: raw_value, overwrite.
func setHeader(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: key, RawValue: []byte(value)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// headerOf returns the value of key in a request or response headers message.
func headerOf(req *extprocv3.ProcessingRequest, key string) (string, bool) {
	hh := req.GetRequestHeaders()
	if hh == nil {
		hh = req.GetResponseHeaders()
	}
	for _, h := range hh.GetHeaders().GetHeaders() {
		if h.GetKey() == key {
			return string(h.GetRawValue()), true
		}
	}
	return "", false
}

// immediate is an ImmediateResponse answer.
func immediate(status int, body string, headers ...*corev3.HeaderValueOption) answer {
	ir := &extprocv3.ImmediateResponse{Body: []byte(body), Headers: &extprocv3.HeaderMutation{SetHeaders: headers}}
	ir.Status = newHTTPStatus(status)
	return answer{resp: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: ir}}}
}
