package extproc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"cdr.dev/slog/v3"
	"cdr.dev/slog/v3/sloggers/slogjson"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/envoy-keypool/envoy-keypool/extproc"
	"github.com/envoy-keypool/envoy-keypool/internal/extprocfixture"
	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// BenchmarkProcessStream plays one upstream attempt as Envoy's upstream ext_proc
// filter does, over a real gRPC connection on loopback TCP: open a Process stream
// whose initial metadata names the pool, send the request headers, read the answer,
// send the response headers, read the answer, half-close and read the end of the
// stream. Client and server share this process, so ns/op and allocs/op count both
// sides of the hop.
//
//   - passthrough: the baseline, a server that answers every message with an empty
//     answer of its kind. Its cost is the cost of any ext_proc hop.
//   - keypool/healthy: envoy-keypool with in-memory state, a first attempt and a
//     healthy key (the hot path), answered 200 with OpenAI's rate-limit headers,
//     which headroom steering reads.
//   - keypool/healthy-without-headroom: the same, with a provider that ignores the
//     rate-limit headers: healthy/healthy-without-headroom is headroom's cost.
//   - keypool/failover: the attempt is answered 429 with a Retry-After, so the server
//     cools the key and adds the retry marker (one info log line, as in production).
//
// Read keypool/*/passthrough as the share of the hop that envoy-keypool adds.
func BenchmarkProcessStream(b *testing.B) {
	healthy := extprocfixture.ResponseHeaders(200, extprocfixture.OpenAIHeadroom()...)
	tests := []struct {
		name   string
		resp   *extprocv3.ProcessingRequest
		server func(*fakeclock.Clock) extprocv3.ExternalProcessorServer
		// wantMarker: the answer to the response headers asks Envoy to retry.
		wantMarker bool
	}{
		{name: "passthrough", resp: healthy, server: func(*fakeclock.Clock) extprocv3.ExternalProcessorServer { return extproc.PassThrough{} }},
		{name: "keypool/healthy", resp: healthy,
			server: func(c *fakeclock.Clock) extprocv3.ExternalProcessorServer {
				return benchKeypoolServer(b, c, providers.OpenAI{})
			}},
		{name: "keypool/healthy-without-headroom", resp: healthy,
			server: func(c *fakeclock.Clock) extprocv3.ExternalProcessorServer {
				return benchKeypoolServer(b, c, noHeadroomProvider{providers.OpenAI{}})
			}},
		{name: "keypool/failover", resp: extprocfixture.ResponseHeaders(429, "retry-after", "20"), wantMarker: true,
			server: func(c *fakeclock.Clock) extprocv3.ExternalProcessorServer {
				return benchKeypoolServer(b, c, providers.OpenAI{})
			}},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			clock := fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
			client := benchServe(b, tt.server(clock))
			ctx := metadata.NewOutgoingContext(context.Background(), metadata.Pairs("x-keypool-pool", "openai"))
			b.ReportAllocs()
			b.ResetTimer()
			cpu := benchCPU()
			for i := 0; b.Loop(); i++ {
				// The failed key's state is over (cooldown and probe window) a few
				// hours later, so every iteration fails over from the same first key
				// instead of walking the pool to exhaustion.
				clock.Advance(3 * time.Hour)
				marker, err := benchAttempt(ctx, client, extprocfixture.RequestHeaders(extprocfixture.Names{}, "bench-"+strconv.Itoa(i), 1), tt.resp)
				if err != nil {
					b.Fatal(err)
				}
				if marker != tt.wantMarker {
					b.Fatalf("retry marker %v, want %v", marker, tt.wantMarker)
				}
			}
			b.ReportMetric(float64(benchCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

// benchCPU is the process's CPU time (user and system, GC included), client and
// server alike: on a shared machine, wall time per op follows the other processes'
// load, CPU time much less.
func benchCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// noHeadroomProvider reads no headroom: the baseline of headroom's cost.
type noHeadroomProvider struct{ providers.Provider }

func (noHeadroomProvider) Headroom(providers.Headers, time.Time) keypool.Headroom {
	return keypool.Headroom{}
}

// benchAttempt plays one attempt and reports whether the answer to the response
// headers carried the retry marker.
func benchAttempt(ctx context.Context, client extprocv3.ExternalProcessorClient, req, resp *extprocv3.ProcessingRequest) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := client.Process(ctx)
	if err != nil {
		return false, err
	}
	if err := s.Send(req); err != nil {
		return false, err
	}
	if a, err := s.Recv(); err != nil || a.GetRequestHeaders() == nil {
		return false, fmt.Errorf("request headers answered %v, %v", a, err)
	}
	if err := s.Send(resp); err != nil {
		return false, err
	}
	a, err := s.Recv()
	if err != nil || a.GetResponseHeaders() == nil {
		return false, fmt.Errorf("response headers answered %v, %v", a, err)
	}
	marker := len(a.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders()) > 0
	if err := s.CloseSend(); err != nil {
		return false, err
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("end of stream: %v", err)
	}
	return marker, nil
}

// benchKeypoolServer is envoy-keypool as `serve` wires it with in-memory state: a
// pool of 4 keys, JSON logs at info level (written nowhere), unregistered metrics.
func benchKeypoolServer(b *testing.B, clock keypool.Clock, prov providers.Provider) *extproc.Server {
	b.Helper()
	keys := make([]keypool.Key, 4)
	for i := range keys {
		keys[i] = keypool.NewKey("openai", fmt.Sprintf("openai-%d", i+1), fmt.Sprintf("bench-openai-key-%d-not-real", i+1))
	}
	pool, err := keypool.NewPool(keypool.PoolOptions{Name: "openai", Keys: keys,
		State: keypool.NewMemoryState(clock, 0), Clock: clock})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := extproc.NewServer(extproc.Options{
		Targets: map[string]*extproc.Target{"openai": {Pool: pool, Provider: prov}},
		Headers: extproc.Headers{PoolMetadataKey: "x-keypool-pool", RequestID: "x-request-id",
			AttemptCount: "x-envoy-attempt-count", RetryMarker: "x-keypool-retry"},
		Logger:   slog.Make(slogjson.Sink(io.Discard)).Leveled(slog.LevelInfo),
		LogLevel: slog.LevelInfo,
		Metrics:  extproc.NewMetrics(nil),
		Clock:    clock,
	})
	if err != nil {
		b.Fatal(err)
	}
	return srv
}

// benchServe serves srv on a free loopback port for the benchmark's lifetime and
// returns a client connected to it.
func benchServe(b *testing.B, srv extprocv3.ExternalProcessorServer) extprocv3.ExternalProcessorClient {
	b.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		conn.Close()
		gs.Stop()
		<-done
	})
	return extprocv3.NewExternalProcessorClient(conn)
}
