package main

import (
	"fmt"
	"net"

	"github.com/envoy-keypool/envoy-keypool/extproc"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
)

// startPassThrough serves a passThrough on listen until stop is called.
func startPassThrough(listen string) (addr string, stop func(), err error) {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return "", nil, fmt.Errorf("listen: %w", err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, extproc.PassThrough{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis) // returns when stopped
	}()
	return lis.Addr().String(), func() { gs.Stop(); <-done }, nil
}
