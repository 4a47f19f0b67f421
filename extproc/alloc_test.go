package extproc

import (
	"context"
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"

	"cdr.dev/slog/v3"
	"cdr.dev/slog/v3/sloggers/slogjson"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"

	"github.com/envoy-keypool/envoy-keypool/internal/extprocfixture"
	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// allocFirstAttemptLimit bounds the allocations of what Process does for the request
// headers of a healthy first attempt (newAttempt, then handle), measured with go1.26:
//
//	newAttempt   1  the attempt (its answers' storage included, see answers.go);
//	                Process recycles it, so under load it is mostly not allocated
//	             1  metadata.ValueFromIncomingContext: the pool name's value slice
//	headers      0  one pass; values read in place (headers.go headerValue)
//	Pick         0  memory state, first attempt: the local view
//	auth header  0  built once per key (targets.go)
//	answer       0  in the attempt's storage
//
// 2 in all. Raise it only for an allocation the hot path needs.
const allocFirstAttemptLimit = 2

// allocHealthyAnswerLimit bounds the allocations of the answer to a healthy 200's
// response headers, OpenAI's rate-limit headers included: Classify, Headroom and
// Finish of a first attempt allocate nothing, the answer is in the attempt's storage.
const allocHealthyAnswerLimit = 0

func TestHotPathAllocations(t *testing.T) {
	s := allocServer(t)
	ctx, req := allocFirstAttempt()
	resp200 := extprocfixture.ResponseHeaders(200, extprocfixture.OpenAIHeadroom()...)
	tests := []struct {
		name  string
		limit int
		run   func() *extprocv3.ProcessingResponse
		check func(*extprocv3.ProcessingResponse) bool
	}{
		{"request headers of a healthy first attempt", allocFirstAttemptLimit,
			func() *extprocv3.ProcessingResponse { return s.newAttempt(ctx).handle(ctx, req) },
			func(r *extprocv3.ProcessingResponse) bool {
				return r.GetRequestHeaders().GetResponse().GetHeaderMutation() != nil
			}},
		{"response headers of a healthy 200", allocHealthyAnswerLimit,
			func() func() *extprocv3.ProcessingResponse {
				// The attempt is made outside the measured function: a fresh one per
				// run, as each stream has its own.
				var attempts []*attempt
				for range 300 {
					a := s.newAttempt(ctx)
					a.handle(ctx, req)
					attempts = append(attempts, a)
				}
				return func() *extprocv3.ProcessingResponse {
					a := attempts[0]
					attempts = attempts[1:]
					return a.handle(ctx, resp200)
				}
			}(),
			func(r *extprocv3.ProcessingResponse) bool {
				return r.GetResponseHeaders() != nil && r.GetResponseHeaders().GetResponse().GetHeaderMutation() == nil
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp *extprocv3.ProcessingResponse
			got := testing.AllocsPerRun(200, func() { resp = tt.run() })
			if !tt.check(resp) {
				t.Fatalf("unexpected answer: %v", resp)
			}
			t.Logf("%s: %v allocations", tt.name, got)
			if got > float64(tt.limit) {
				t.Errorf("%s: %v allocations, want at most %d", tt.name, got, tt.limit)
			}
		})
	}
}

// BenchmarkAttemptHandling is the server's own work per attempt, without gRPC:
// what BenchmarkProcessStream's keypool cases add to the pass-through hop.
//
//   - healthy attempt and healthy attempt without headroom: request headers, then a
//     200 with OpenAI's rate-limit headers; the second's provider ignores them. Their
//     ratio is what headroom steering costs a healthy attempt.
//   - failover attempt: request headers, then a 429 with a Retry-After that cools
//     the key (its state is over a few hours later, so every attempt fails over from
//     the same first key).
func BenchmarkAttemptHandling(b *testing.B) {
	b.Run("request headers/first attempt", func(b *testing.B) {
		s := allocServer(b)
		ctx, req := allocFirstAttempt()
		b.ReportAllocs()
		for b.Loop() {
			s.newAttempt(ctx).handle(ctx, req)
		}
	})
	for _, tt := range []struct {
		name     string
		headroom bool
	}{{"healthy attempt", true}, {"healthy attempt without headroom", false}} {
		b.Run(tt.name, func(b *testing.B) {
			s := allocServer(b)
			if !tt.headroom {
				t := s.targets.Load().byName["openai"].Target
				if err := s.SetTargets(map[string]*Target{"openai": {Pool: t.Pool, Provider: noHeadroom{t.Provider}}}); err != nil {
					b.Fatal(err)
				}
			}
			ctx, req := allocFirstAttempt()
			resp := extprocfixture.ResponseHeaders(200, extprocfixture.OpenAIHeadroom()...)
			b.ReportAllocs()
			cpu := startCPU()
			for b.Loop() {
				a := s.newAttempt(ctx)
				a.handle(ctx, req)
				a.handle(ctx, resp)
				a.end(ctx)
			}
			cpu.report(b)
		})
	}
	b.Run("failover attempt", func(b *testing.B) {
		clock := fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
		s := allocServerWithClock(b, clock)
		ctx, req := allocFirstAttempt()
		resp := extprocfixture.ResponseHeaders(429, "retry-after", "20")
		b.ReportAllocs()
		for b.Loop() {
			clock.Advance(3 * time.Hour)
			a := s.newAttempt(ctx)
			a.handle(ctx, req)
			if r := a.handle(ctx, resp); len(r.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders()) == 0 {
				b.Fatal("the 429 asked for no retry")
			}
			a.end(ctx)
		}
	})
}

// cpuClock measures the process's CPU time (user and system, GC included) over a
// benchmark loop: on a shared machine wall time per op follows the other processes'
// load, CPU time much less.
type cpuClock struct{ start time.Duration }

func startCPU() cpuClock { return cpuClock{start: processCPU()} }

// report adds cpu-ns/op to the benchmark's results.
func (c cpuClock) report(b *testing.B) {
	b.ReportMetric(float64(processCPU()-c.start)/float64(b.N), "cpu-ns/op")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// noHeadroom is a provider that reads no headroom: the baseline of headroom's cost.
type noHeadroom struct{ providers.Provider }

func (noHeadroom) Headroom(providers.Headers, time.Time) keypool.Headroom { return keypool.Headroom{} }

// allocFirstAttempt is what Process has in hand for the request headers of a first
// attempt: the stream's context, with the incoming metadata grpc-go builds from
// Envoy's request, and the message.
func allocFirstAttempt() (context.Context, *extprocv3.ProcessingRequest) {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(
		":authority", "envoy-keypool", "content-type", "application/grpc", "user-agent", "envoy/1.37.0",
		"x-keypool-pool", "openai"))
	return ctx, extprocfixture.RequestHeaders(extprocfixture.Names{}, "5f0c7e7a-8a1b-4c59-9d0e-0d8f3a1e2b44", 1)
}

// allocServer is the server as `serve` wires it: in-memory state, JSON logs at info
// level, unregistered metrics.
func allocServer(t testing.TB) *Server { return allocServerWithClock(t, nil) }

func allocServerWithClock(t testing.TB, clock keypool.Clock) *Server {
	t.Helper()
	keys := make([]keypool.Key, 4)
	for i := range keys {
		keys[i] = keypool.NewKey("openai", fmt.Sprintf("openai-%d", i+1), fmt.Sprintf("alloc-openai-key-%d-not-real", i+1))
	}
	pool, err := keypool.NewPool(keypool.PoolOptions{Name: "openai", Keys: keys,
		State: keypool.NewMemoryState(clock, 0), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(Options{
		Targets: map[string]*Target{"openai": {Pool: pool, Provider: providers.OpenAI{}}},
		Headers: Headers{PoolMetadataKey: "x-keypool-pool", RequestID: "x-request-id",
			AttemptCount: "x-envoy-attempt-count", RetryMarker: "x-keypool-retry"},
		Logger:   slog.Make(slogjson.Sink(io.Discard)).Leveled(slog.LevelInfo),
		LogLevel: slog.LevelInfo,
		Metrics:  NewMetrics(nil),
		Clock:    clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
