package app

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/internal/syncbuf"
)

const panicKeyValue = "test-value-that-must-never-be-logged-0042"

// panickingProcessor panics in the middle of a stream, with a key value in the
// panic, as a bug on the request path might.
type panickingProcessor struct {
	extprocv3.UnimplementedExternalProcessorServer
}

func (panickingProcessor) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	panic("cannot inject " + panicKeyValue)
}

func TestPanicInAStreamGetsAnInternalErrorAndTheServerKeepsServing(t *testing.T) {
	logs := &syncbuf.Buffer{}
	reg := prometheus.NewRegistry()
	redact := strings.NewReplacer(panicKeyValue, "[key openai/one]").Replace
	rec := newRecoverer(newLogger(logs, config.Log{Level: "info", Format: "json"}), reg, redact)
	l := config.Listen{MaxConcurrentStreams: 16, MaxMessageBytes: 1 << 20}
	gs := grpc.NewServer(grpcServerOptions(l, nil, rec)...)
	extprocv3.RegisterExternalProcessorServer(gs, panickingProcessor{})
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		stream, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&extprocv3.ProcessingRequest{}); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "envoy-keypool: internal error") {
			t.Fatalf("stream %d ended with %v, want Internal \"envoy-keypool: internal error\"", i, err)
		}
		if strings.Contains(err.Error(), panicKeyValue) {
			t.Fatal("the stream's error shows the key value")
		}
	}
	// The process, the connection and the other services are still there.
	if hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after the panics = %v, %v", hc, err)
	}
	if n := testutil.ToFloat64(rec.panics.WithLabelValues("/envoy.service.ext_proc.v3.ExternalProcessor/Process")); n != 3 {
		t.Errorf("envoy_keypool_grpc_panics_total = %v, want 3", n)
	}
	out := logs.String()
	if strings.Contains(out, panicKeyValue) {
		t.Error("the panic log shows the key value")
	}
	if !strings.Contains(out, "cannot inject [key openai/one]") || !strings.Contains(out, "panickingProcessor") {
		t.Errorf("the panic log lacks the redacted panic or its stack:\n%s", out)
	}
}
