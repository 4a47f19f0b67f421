package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"cdr.dev/slog/v3"
	"cdr.dev/slog/v3/sloggers/slogjson"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/extproc"
	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// serveUnderLoadOptions are the gRPC server options BenchmarkServeUnderLoad compares:
// those of `envoy-keypool serve` (cmd/envoy-keypool/internal/app/serve.go) first.
var serveUnderLoadOptions = []struct {
	name string
	opts []grpc.ServerOption
}{
	{"serve", nil},
	// Stream handlers on goroutines that are kept, with their grown stacks, instead
	// of one new goroutine per stream.
	{"stream-workers", []grpc.ServerOption{grpc.NumStreamWorkers(256)}},
	// Fixed flow-control windows turn off grpc-go's BDP estimation and its pings.
	{"fixed-windows", []grpc.ServerOption{grpc.InitialWindowSize(1 << 20), grpc.InitialConnWindowSize(1 << 20)}},
}

// newServeLikeKeypool is envoy-keypool's ext_proc server as serve wires it, from the
// configuration the bench command serves (keypoolConfig: 4 fake keys, 1ms
// rate_limited cooldowns, JSON logs at info) with in-memory state; the logs go to
// io.Discard (encoding them is the cost, not the write), metrics to a registry.
func newServeLikeKeypool(tb testing.TB) extprocv3.ExternalProcessorServer {
	tb.Helper()
	return newServeLikeKeypoolAt(tb, slog.LevelInfo)
}

// newServeLikeKeypoolAt is newServeLikeKeypool logging at level.
func newServeLikeKeypoolAt(tb testing.TB, level slog.Level) extprocv3.ExternalProcessorServer {
	tb.Helper()
	env := map[string]string{}
	for _, kv := range keyEnv(4) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	cfg, err := config.Read(strings.NewReader(keypoolConfig(4, "")), func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	})
	if err != nil {
		tb.Fatal(err)
	}
	pc := &cfg.Pools[0]
	pool, err := keypool.NewPool(pc.PoolOptions(keypool.NewMemoryState(nil, cfg.State.RequestTTL.Std())))
	if err != nil {
		tb.Fatal(err)
	}
	prov, err := providers.Build(pc.ProviderSpec())
	if err != nil {
		tb.Fatal(err)
	}
	log := slog.Make(slogjson.Sink(io.Discard)).Leveled(level)
	srv, err := extproc.NewServer(extproc.Options{
		Targets: map[string]*extproc.Target{pc.Name: {Pool: pool, Provider: prov, ModelHeader: pc.ModelHeader}},
		Headers: extproc.Headers{PoolMetadataKey: cfg.Envoy.PoolMetadataKey, RequestID: cfg.Envoy.RequestIDHeader,
			AttemptCount: cfg.Envoy.AttemptCountHeader, RetryMarker: cfg.Envoy.RetryMarkerHeader},
		Logger:         log,
		LogLevel:       level,
		ClassifyBodies: cfg.Envoy.ClassifiesErrorBodies(),
		Metrics:        extproc.NewMetrics(prometheus.NewRegistry()),
	})
	if err != nil {
		tb.Fatal(err)
	}
	return srv
}

func serveTB(tb testing.TB, srv extprocv3.ExternalProcessorServer, opts ...grpc.ServerOption) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	tb.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

// driveChild runs this binary as keypool-load against addr, on CPU 1 when taskset
// is there, for requests requests, and returns its report.
func driveChild(tb testing.TB, loadBin, addr string, requests int, streams int, failRate float64) result {
	tb.Helper()
	args := []string{loadBin, "--json", "--target", addr, "--warmup", "0", "--duration", "10m",
		"--requests", strconv.Itoa(requests), "--concurrency", strconv.Itoa(streams),
		"--fail-rate", strconv.FormatFloat(failRate, 'f', -1, 64)}
	cmd := newPinning(true).command(1, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		tb.Fatalf("load tool: %v\n%s", err, errOut.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		tb.Fatal(err)
	}
	if rep.Keypool.Errors != 0 {
		tb.Fatalf("load tool: errors %v", rep.Keypool.ErrorsByCode)
	}
	return rep.Keypool
}

// BenchmarkServeUnderLoad serves an ext_proc server in this process while
// keypool-load, in a process of its own (pinned to CPU 1 with taskset), plays
// Envoy's side against it over loopback TCP: one op is one client request (a
// failover adds an attempt). cpu-ns/op is this process's CPU time per request: the
// server's side only, so a CPU profile of this benchmark is a profile of the server
// under load:
//
//	go test -c -o /tmp/kl.test ./internal/cmd/keypool-load/
//	taskset -c 0 /tmp/kl.test -test.run '^$' -test.bench 'ServeUnderLoad/keypool/healthy' \
//	  -test.benchtime 50000x -test.cpuprofile /tmp/cpu.out
//	go tool pprof -top /tmp/kl.test /tmp/cpu.out
func BenchmarkServeUnderLoad(b *testing.B) {
	loadBin := selfAsLoadTool(b)
	if _, err := exec.LookPath(loadBin); err != nil {
		b.Skip(err)
	}
	servers := []struct {
		name string
		new  func(testing.TB) extprocv3.ExternalProcessorServer
	}{
		{"pass-through", func(testing.TB) extprocv3.ExternalProcessorServer { return extproc.PassThrough{} }},
		{"keypool", newServeLikeKeypool},
		// Logs at warn: without the info line of a failure that changes a cooldown
		// (with the bench's 1ms cooldowns, nearly every failure), what that line
		// costs under load.
		{"keypool-warn", func(tb testing.TB) extprocv3.ExternalProcessorServer {
			return newServeLikeKeypoolAt(tb, slog.LevelWarn)
		}},
	}
	mixes := []struct {
		name     string
		failRate float64
	}{{"healthy", 0}, {"failover", 0.1}}
	for _, s := range servers {
		for _, m := range mixes {
			for _, so := range serveUnderLoadOptions {
				b.Run(s.name+"/"+m.name+"/"+so.name, func(b *testing.B) {
					addr := serveTB(b, s.new(b), so.opts...)
					driveChild(b, loadBin, addr, 2000, 32, m.failRate) // warm-up: connections, stacks, heap
					b.ResetTimer()
					cpu := selfCPU()
					r := driveChild(b, loadBin, addr, b.N, 32, m.failRate)
					cpu = selfCPU() - cpu
					b.StopTimer()
					b.ReportMetric(cpu*1e9/float64(b.N), "cpu-ns/op")
					b.ReportMetric(cpu*1e9/float64(r.Attempts), "cpu-ns/attempt")
					b.ReportMetric(r.MsgP99us, "msg-p99-µs")
				})
			}
		}
	}
}
