package extproc

import (
	"errors"
	"io"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// PassThrough is an ext_proc server that answers every message with an empty
// answer of its kind, so Envoy changes nothing. Its cost is the cost of the ext_proc
// hop itself (gRPC, HTTP/2, protobuf) that any ext_proc server pays: the baseline
// the benchmarks and the load tool measure envoy-keypool against.
type PassThrough struct {
	extprocv3.UnimplementedExternalProcessorServer
}

// Process implements ExternalProcessorServer.
func (PassThrough) Process(s extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			return nil
		}
		if err != nil {
			return err
		}
		if resp := EmptyAnswer(req); resp != nil {
			if err := s.Send(resp); err != nil {
				return err
			}
		}
	}
}

// EmptyAnswer is the answer of req's kind that changes nothing; nil for a message
// that expects no answer (no request set).
func EmptyAnswer(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return continueRequestHeaders(nil)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return continueResponseHeaders(nil)
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	}
	return nil
}
