package main

import (
	"errors"
	"io"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// bodyAsker answers a failure's response headers by asking for the body, as
// envoy-keypool does when it classifies error bodies, and sets the retry marker on
// the body's answer when the body is the one the load tool sends.
type bodyAsker struct {
	extprocv3.UnimplementedExternalProcessorServer
}

func (bodyAsker) Process(s extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		var resp *extprocv3.ProcessingResponse
		switch r := req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
			for _, h := range r.ResponseHeaders.GetHeaders().GetHeaders() {
				if h.GetKey() == ":status" && string(h.GetRawValue()) == "429" {
					resp.ModeOverride = &extprocfilterv3.ProcessingMode{ResponseBodyMode: extprocfilterv3.ProcessingMode_BUFFERED}
				}
			}
		case *extprocv3.ProcessingRequest_ResponseBody:
			br := &extprocv3.BodyResponse{}
			if string(r.ResponseBody.GetBody()) == rateLimitBody && r.ResponseBody.GetEndOfStream() {
				br.Response = &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
					{Header: &corev3.HeaderValue{Key: "x-keypool-retry", RawValue: []byte("rate_limited")}},
				}}}
			}
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
		}
		if err := s.Send(resp); err != nil {
			return err
		}
	}
}

func TestBodyIsSentWhenTheServerAsksForIt(t *testing.T) {
	addr := serve(t, bodyAsker{})
	rep := runJSON(t, "--target", addr, "--concurrency", "2", "--duration", "300ms",
		"--fail-rate", "1", "--fail-status", "429", "--max-attempts", "2")
	r := rep.Keypool
	// Every attempt's marker came on the body's answer: each one is a retry, and
	// each request used its two attempts up.
	checkWellFormedWithBodies(t, "body asker", r, r.Attempts)
	if r.Retries != r.Attempts || r.RetriesUsedUp != r.Requests {
		t.Errorf("%d retries, %d used up, for %d attempts of %d requests; want every attempt retried", r.Retries, r.RetriesUsedUp, r.Attempts, r.Requests)
	}
}
