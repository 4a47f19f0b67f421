package extproc_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"github.com/envoy-keypool/envoy-keypool/extproc"
	"github.com/envoy-keypool/envoy-keypool/internal/extprocfixture"
	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// swapTargets is one configuration generation: pools named in pools, each with one
// key whose value names the generation.
func swapTargets(t testing.TB, gen string, pools ...string) map[string]*extproc.Target {
	t.Helper()
	out := map[string]*extproc.Target{}
	for _, name := range pools {
		pool, err := keypool.NewPool(keypool.PoolOptions{Name: name, Keys: []keypool.Key{
			keypool.NewKey(name, name+"-1", swapKeyValue(gen, name)),
		}})
		if err != nil {
			t.Fatal(err)
		}
		out[name] = &extproc.Target{Pool: pool, Provider: providers.OpenAI{}}
	}
	return out
}

func swapKeyValue(gen, pool string) string { return "swap-key-" + gen + "-" + pool + "-0123456789" }

func swapServer(t *testing.T, targets map[string]*extproc.Target) (*extproc.Server, extprocv3.ExternalProcessorClient) {
	t.Helper()
	srv, err := extproc.NewServer(extproc.Options{Targets: targets, Headers: extproc.Headers{
		PoolMetadataKey: "x-keypool-pool", RequestID: "x-request-id",
		AttemptCount: "x-envoy-attempt-count", RetryMarker: "x-keypool-retry",
	}})
	if err != nil {
		t.Fatal(err)
	}
	return srv, serveInProcess(t, srv)
}

// serveInProcess serves srv over an in-memory gRPC connection until the test ends.
func serveInProcess(t *testing.T, srv *extproc.Server) extprocv3.ExternalProcessorClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		gs.Stop()
	})
	return extprocv3.NewExternalProcessorClient(conn)
}

// swapStream is one attempt's stream, opened and answered step by step.
type swapStream struct {
	s extprocv3.ExternalProcessor_ProcessClient
}

func openSwapStream(ctx context.Context, c extprocv3.ExternalProcessorClient, pool string) (*swapStream, error) {
	s, err := c.Process(metadata.AppendToOutgoingContext(ctx, "x-keypool-pool", pool))
	return &swapStream{s: s}, err
}

// request sends an attempt's request headers; it returns the injected authorization,
// or the immediate response's status.
func (st *swapStream) request(id string) (auth string, immediate int, err error) {
	if err := st.s.Send(extprocfixture.RequestHeaders(extprocfixture.Names{}, id, 1)); err != nil {
		return "", 0, err
	}
	resp, err := st.s.Recv()
	if err != nil {
		return "", 0, err
	}
	if ir := resp.GetImmediateResponse(); ir != nil {
		return "", int(ir.GetStatus().GetCode()), nil
	}
	for _, o := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if o.GetHeader().GetKey() == "authorization" {
			return string(o.GetHeader().GetRawValue()), 0, nil
		}
	}
	return "", 0, fmt.Errorf("no key injected: %v", resp)
}

// respond sends the response headers with status and reports whether the answer
// carries the retry marker.
func (st *swapStream) respond(status int, extra ...string) (bool, error) {
	if err := st.s.Send(extprocfixture.ResponseHeaders(status, extra...)); err != nil {
		return false, err
	}
	resp, err := st.s.Recv()
	if err != nil {
		return false, err
	}
	rh := resp.GetResponseHeaders()
	if rh == nil {
		return false, fmt.Errorf("answer is not a response-headers answer: %v", resp)
	}
	for _, o := range rh.GetResponse().GetHeaderMutation().GetSetHeaders() {
		if o.GetHeader().GetKey() == "x-keypool-retry" {
			return true, nil
		}
	}
	return false, st.s.CloseSend()
}

func TestSetTargetsStreamsInFlightFinishOnTheirTargets(t *testing.T) {
	genA := swapTargets(t, "a", "openai", "retired")
	srv, client := swapServer(t, genA)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Two attempts in flight on generation a: their request headers are answered.
	var inFlight []*swapStream
	for _, pool := range []string{"openai", "retired"} {
		st, err := openSwapStream(ctx, client, pool)
		if err != nil {
			t.Fatal(err)
		}
		auth, _, err := st.request("before-" + pool)
		if err != nil || auth != "Bearer "+swapKeyValue("a", pool) {
			t.Fatalf("%s before the swap: %q, %v; want generation a's key", pool, auth, err)
		}
		inFlight = append(inFlight, st)
	}

	if err := srv.SetTargets(swapTargets(t, "b", "openai", "added")); err != nil {
		t.Fatal(err)
	}

	// The attempts in flight finish on generation a, even the one whose pool is gone:
	// their 429 is judged by generation a's pool and asks for a retry.
	for i, st := range inFlight {
		marked, err := st.respond(429, "retry-after", "30")
		if err != nil || !marked {
			t.Fatalf("in-flight attempt %d after the swap: marker %v, %v; want the retry marker", i, marked, err)
		}
	}
	if st := genA["openai"].Pool.Status(); st[0].Available(genA["openai"].Pool.Now()) {
		t.Error("the in-flight 429 did not cool generation a's key")
	}

	// New attempts see generation b.
	tests := []struct {
		pool          string
		wantAuth      string
		wantImmediate int
	}{
		{"openai", "Bearer " + swapKeyValue("b", "openai"), 0},
		{"added", "Bearer " + swapKeyValue("b", "added"), 0},
		{"retired", "", 500}, // no such pool any more: fails closed
	}
	for _, tt := range tests {
		st, err := openSwapStream(ctx, client, tt.pool)
		if err != nil {
			t.Fatal(err)
		}
		auth, code, err := st.request("after-" + tt.pool)
		if err != nil || auth != tt.wantAuth || code != tt.wantImmediate {
			t.Errorf("%s after the swap: auth %q, immediate %d, %v; want %q, %d", tt.pool, auth, code, err, tt.wantAuth, tt.wantImmediate)
		}
	}
}

func TestSetTargetsRefusesAnIncompleteTargetAndKeepsServing(t *testing.T) {
	srv, client := swapServer(t, swapTargets(t, "a", "openai"))
	bad := swapTargets(t, "b", "openai")
	bad["broken"] = &extproc.Target{Provider: providers.OpenAI{}} // no pool
	err := srv.SetTargets(bad)
	if err == nil || !strings.Contains(err.Error(), `"broken"`) {
		t.Fatalf("SetTargets with an incomplete target: %v, want an error naming it", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := openSwapStream(ctx, client, "openai")
	if err != nil {
		t.Fatal(err)
	}
	if auth, _, err := st.request("r"); err != nil || auth != "Bearer "+swapKeyValue("a", "openai") {
		t.Fatalf("after a refused swap: %q, %v; want the old generation's key", auth, err)
	}
}

// Streams run without pause while another goroutine swaps the targets: every stream
// is served by one whole generation, and the race detector watches the handover.
func TestSetTargetsUnderConcurrentStreams(t *testing.T) {
	gens := []map[string]*extproc.Target{swapTargets(t, "a", "openai"), swapTargets(t, "b", "openai")}
	srv, client := swapServer(t, gens[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var stop atomic.Bool
	var swaps atomic.Int64
	swapped := make(chan struct{})
	go func() {
		defer close(swapped)
		for i := 1; !stop.Load(); i++ {
			if err := srv.SetTargets(gens[i%2]); err != nil {
				t.Error(err)
				return
			}
			swaps.Add(1)
		}
	}()

	valid := map[string]bool{"Bearer " + swapKeyValue("a", "openai"): true, "Bearer " + swapKeyValue("b", "openai"): true}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				st, err := openSwapStream(ctx, client, "openai")
				if err != nil {
					t.Error(err)
					return
				}
				auth, code, err := st.request(fmt.Sprintf("r-%d-%d", g, i))
				if err != nil || code != 0 || !valid[auth] {
					t.Errorf("stream %d/%d: auth %q, immediate %d, %v", g, i, auth, code, err)
					return
				}
				if _, err := st.respond(200); err != nil {
					t.Errorf("stream %d/%d response: %v", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	stop.Store(true)
	<-swapped
	if swaps.Load() == 0 {
		t.Fatal("no swap happened while the streams ran")
	}
}
