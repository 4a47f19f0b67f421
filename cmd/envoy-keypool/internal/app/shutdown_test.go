package app_test

import (
	"net/http"
	"regexp"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func readyzStatus(t *testing.T, adminAddr string) int {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func exitCode(t *testing.T, r *running) int {
	t.Helper()
	done := make(chan int, 1)
	go func() { done <- r.stop() }()
	select {
	case code := <-done:
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not stop\nstderr:\n%s", r.stderr.String())
		return -1
	}
}

func TestSIGTERMTurnsUnhealthyAtOnceAndKeepsServingNewStreamsDuringTheDrain(t *testing.T) {
	// A drain far longer than the test: it ends with a second signal.
	r := start(t, serveConfig, "--drain-delay", "10m")
	ctx := testContext(t)
	before := dial(t, r.grpcAddr)
	if _, _, err := startAttempt(ctx, t, before, "openai", "before", 1); err != nil {
		t.Fatal(err)
	}

	r.signals <- syscall.SIGTERM
	if _, err := r.stderr.waitFor(ctx, regexp.MustCompile(`shutting down: health NOT_SERVING`)); err != nil {
		t.Fatal(err)
	}
	hc, err := healthpb.NewHealthClient(before).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health during the drain = %v, %v; want NOT_SERVING", hc, err)
	}
	if code := readyzStatus(t, r.adminAddr); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz during the drain = %d, want 503", code)
	}
	// Envoy may open new streams, on new connections too, until its health check has
	// taken the replica out: they are served.
	after := dial(t, r.grpcAddr)
	key, a, err := startAttempt(ctx, t, after, "openai", "during-drain", 1)
	if err != nil || key != testSecrets["TEST_OPENAI_KEY_1"] {
		t.Fatalf("a new stream during the drain got a key: %v, err %v; want the first key", key != "", err)
	}
	if marker, err := a.finish(429); err != nil || marker != "rate_limited" {
		t.Errorf("429 during the drain: marker %q, err %v", marker, err)
	}
	if m := r.stderr.String(); regexp.MustCompile(`drain delay over`).MatchString(m) {
		t.Fatal("the drain ended before the second signal")
	}

	r.signals <- syscall.SIGINT
	if _, err := r.stderr.waitFor(ctx, regexp.MustCompile(`second signal: skipping the rest of the drain delay`)); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(t, r); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func TestAfterTheDrainDelayNewConnectionsAreRefusedAndStreamsInFlightFinish(t *testing.T) {
	r := start(t, serveConfig, "--drain-delay", "200ms", "--shutdown-timeout", "1m")
	ctx := testContext(t)
	conn := dial(t, r.grpcAddr)
	_, inFlight, err := startAttempt(ctx, t, conn, "openai", "in-flight", 1)
	if err != nil {
		t.Fatal(err)
	}
	r.signals <- syscall.SIGTERM
	if _, err := r.stderr.waitFor(ctx, regexp.MustCompile(`drain delay over: no new connections`)); err != nil {
		t.Fatal(err)
	}
	// The listener is closed once GracefulStop started; a fresh connection fails.
	waitUntil(t, "the listener to close", 10*time.Second, func() bool {
		_, _, err := startAttempt(ctx, t, dial(t, r.grpcAddr), "openai", "late", 1)
		return status.Code(err) == codes.Unavailable
	})
	if marker, err := inFlight.finish(429); err != nil || marker != "rate_limited" {
		t.Fatalf("the stream in flight: marker %q, err %v; want it served to its end", marker, err)
	}
	if code := exitCode(t, r); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func TestShutdownTimeoutCutsStreamsStillOpen(t *testing.T) {
	r := start(t, serveConfig, "--shutdown-timeout", "300ms")
	ctx := testContext(t)
	_, stuck, err := startAttempt(ctx, t, dial(t, r.grpcAddr), "openai", "stuck", 1)
	if err != nil {
		t.Fatal(err)
	}
	r.signals <- syscall.SIGTERM
	if code := exitCode(t, r); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if _, err := r.stderr.waitFor(ctx, regexp.MustCompile(`shutdown timeout: closing the streams still open`)); err != nil {
		t.Error(err)
	}
	if _, err := stuck.finish(200); err == nil {
		t.Error("a stream open past the shutdown timeout was not cut")
	}
}

func TestSecondSignalCutsStreamsAtOnce(t *testing.T) {
	r := start(t, serveConfig, "--shutdown-timeout", "10m")
	ctx := testContext(t)
	_, open, err := startAttempt(ctx, t, dial(t, r.grpcAddr), "openai", "open", 1)
	if err != nil {
		t.Fatal(err)
	}
	r.signals <- syscall.SIGTERM
	if _, err := r.stderr.waitFor(ctx, regexp.MustCompile(`waiting for the streams in flight`)); err != nil {
		t.Fatal(err)
	}
	r.signals <- syscall.SIGTERM
	if code := exitCode(t, r); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if _, err := r.stderr.waitFor(ctx, regexp.MustCompile(`second signal: closing the streams still open`)); err != nil {
		t.Error(err)
	}
	if _, err := open.finish(200); err == nil {
		t.Error("the open stream survived a second signal")
	}
}
