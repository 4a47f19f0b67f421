package standin

import (
	"net"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Point 9: provider endpoints are chosen round robin (Cluster.lb_policy ROUND_ROBIN).
func TestUpstreamRoundRobin(t *testing.T) {
	a, b := startUpstream(t, nil), startUpstream(t, nil)
	ep := startFakeExtProc(t, nil)
	px := startProxy(t, "keypool_cluster.yaml", nil, map[string][]string{"openai": {a.addr(), b.addr()}, "keypool": {ep.addr}})
	for range 6 {
		if st, _, _ := do(t, px, "GET", "/v1/models", "", nil); st != 200 {
			t.Fatalf("status %d", st)
		}
	}
	if na, nb := len(a.recorded()), len(b.recorded()); na != 3 || nb != 3 {
		t.Fatalf("endpoints got %d and %d requests, want 3 and 3", na, nb)
	}
}

func streamsOf(fs ...*fakeExtProc) []int {
	var out []int
	for _, f := range fs {
		out = append(out, len(f.recorded()))
	}
	return out
}

// Point 9: ext_proc streams go round robin over the healthy replicas only; active gRPC
// health checks (grpc.health.v1.Health/Check) move a replica out after
// unhealthy_threshold network failures or at once when it answers NOT_SERVING, and back
// in after healthy_threshold successes (health_checker_impl.cc, grpc_health_checker).
func TestExtProcHealthChecks(t *testing.T) {
	up := startUpstream(t, nil)
	r1, r2, r3 := startFakeExtProc(t, nil), startFakeExtProc(t, nil), startFakeExtProc(t, nil)
	r2.setServing(false)
	px := startProxy(t, "health.yaml", nil, map[string][]string{"openai": {up.addr()}, "keypool": {r1.addr, r2.addr, r3.addr}})
	for range 4 {
		do(t, px, "GET", "/", "", nil)
	}
	if got := streamsOf(r1, r2, r3); got[0] != 2 || got[1] != 0 || got[2] != 2 {
		t.Fatalf("streams per replica %v, want [2 0 2]: NOT_SERVING replica must get none", got)
	}

	// NOT_SERVING is an active failure: unhealthy at once.
	r1.setServing(false)
	c := px.clusters["keypool"]
	waitFor(t, "replica 1 unhealthy", func() bool { return !c.hosts[0].healthy.Load() })
	// Back to SERVING: healthy after healthy_threshold (2) checks.
	r2.setServing(true)
	waitFor(t, "replica 2 healthy", func() bool { return c.hosts[1].healthy.Load() })
	before := streamsOf(r1, r2, r3)
	for range 4 {
		do(t, px, "GET", "/", "", nil)
	}
	after := streamsOf(r1, r2, r3)
	if after[0] != before[0] || after[1]-before[1] != 2 || after[2]-before[2] != 2 {
		t.Fatalf("streams %v -> %v, want replicas 2 and 3 to share 4 streams", before, after)
	}
}

// A replica that stops accepting connections fails network checks and leaves after
// unhealthy_threshold of them.
func TestHealthCheckConnectFailure(t *testing.T) {
	up := startUpstream(t, nil)
	r1, r2 := startFakeExtProc(t, nil), startFakeExtProc(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	px := startProxy(t, "health.yaml", params{"Panic": "0"}, map[string][]string{"openai": {up.addr()}, "keypool": {r1.addr, r2.addr, dead}})
	c := px.clusters["keypool"]
	if c.hosts[2].healthy.Load() {
		t.Fatal("a host that never answered is healthy")
	}
	for range 4 {
		if st, _, _ := do(t, px, "GET", "/", "", nil); st != 200 {
			t.Fatalf("status %d", st)
		}
	}
	if got := streamsOf(r1, r2); got[0] != 2 || got[1] != 2 {
		t.Fatalf("streams %v, want [2 2]", got)
	}
	// The state machine itself: network failures count, an active one is immediate.
	h := &host{}
	h.healthy.Store(true)
	s := &hostHealth{}
	cfg := &healthCheckConfig{unhealthyThreshold: 3, healthyThreshold: 2}
	for i, r := range []hcFailure{hcNetwork, hcNetwork} {
		if s.record(h, cfg, r); !h.healthy.Load() {
			t.Fatalf("unhealthy after %d network failures, threshold 3", i+1)
		}
	}
	if s.record(h, cfg, hcNetwork); h.healthy.Load() {
		t.Fatal("still healthy after 3 network failures")
	}
	h.healthy.Store(true)
	if s.record(h, cfg, hcActive); h.healthy.Load() {
		t.Fatal("still healthy after NOT_SERVING")
	}
}

// Below healthy_panic_threshold (50% by default) Envoy's load balancer panics and uses
// every host, healthy or not; with 0 it never does.
func TestPanicThreshold(t *testing.T) {
	for _, tc := range []struct {
		panic       string
		wantToSick  bool
		description string
	}{
		{"50", true, "1 of 3 healthy is below 50%: all hosts used"},
		{"0", false, "panic disabled: healthy host only"},
	} {
		t.Run(tc.panic, func(t *testing.T) {
			up := startUpstream(t, nil)
			ok, sick1, sick2 := startFakeExtProc(t, nil), startFakeExtProc(t, nil), startFakeExtProc(t, nil)
			sick1.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
			sick2.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
			px := startProxy(t, "health.yaml", params{"Panic": tc.panic}, map[string][]string{"openai": {up.addr()}, "keypool": {ok.addr, sick1.addr, sick2.addr}})
			for range 3 {
				do(t, px, "GET", "/", "", nil)
			}
			got := streamsOf(ok, sick1, sick2)
			if toSick := got[1]+got[2] > 0; toSick != tc.wantToSick {
				t.Fatalf("%s: streams %v", tc.description, got)
			}
		})
	}
}

// HealthyEndpoints reports what the health checks decided, as Envoy's admin
// /clusters page does: tests wait on it instead of guessing a delay.
func TestHealthyEndpointsFollowsHealthChecks(t *testing.T) {
	up := startUpstream(t, nil)
	r1, r2 := startFakeExtProc(t, nil), startFakeExtProc(t, nil)
	px := startProxy(t, "health.yaml", nil, map[string][]string{"openai": {up.addr()}, "keypool": {r1.addr, r2.addr}})
	if got := px.HealthyEndpoints("keypool"); len(got) != 2 {
		t.Fatalf("healthy %v, want both replicas", got)
	}
	r1.setServing(false)
	waitFor(t, "replica 1 reported unhealthy", func() bool {
		got := px.HealthyEndpoints("keypool")
		return len(got) == 1 && got[0] == r2.addr
	})
	if got := px.HealthyEndpoints("no-such-cluster"); got != nil {
		t.Fatalf("unknown cluster: %v", got)
	}
	if got := px.HealthyEndpoints("openai"); len(got) != 1 || got[0] != up.addr() {
		t.Fatalf("cluster without health checks: %v, want its endpoint", got)
	}
}
