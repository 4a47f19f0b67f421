package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"

	"github.com/envoy-keypool/envoy-keypool/extproc"
	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// startKeypool serves an envoy-keypool ext_proc server with an in-memory pool
// "openai" of size keys on a free loopback port, for the test's lifetime.
func startKeypool(t *testing.T, size int) string {
	t.Helper()
	keys := make([]keypool.Key, size)
	for i := range keys {
		keys[i] = keypool.NewKey("openai", fmt.Sprintf("k%d", i+1), fmt.Sprintf("test-load-key-%d-not-real", i+1))
	}
	pool, err := keypool.NewPool(keypool.PoolOptions{Name: "openai", Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := extproc.NewServer(extproc.Options{
		Targets: map[string]*extproc.Target{"openai": {
			Pool: pool, Provider: providers.OpenAI{},
		}},
		Headers: extproc.Headers{PoolMetadataKey: "x-keypool-pool", RequestID: "x-request-id",
			AttemptCount: "x-envoy-attempt-count", RetryMarker: "x-keypool-retry"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, srv)
}

func serve(t *testing.T, srv extprocv3.ExternalProcessorServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

func runJSON(t *testing.T, args ...string) report {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), append(args, "--json", "--warmup", "0"), &stdout, &stderr); err != nil {
		t.Fatalf("run %q: %v\nstderr: %s", args, err, stderr.String())
	}
	var rep report
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("report is not the documented JSON: %v", err)
	}
	return rep
}

// checkWellFormed holds for any run: the counts add up and the percentiles are
// ordered.
func checkWellFormed(t *testing.T, name string, r result) {
	t.Helper()
	checkWellFormedWithBodies(t, name, r, 0)
}

func checkWellFormedWithBodies(t *testing.T, name string, r result, bodies int64) {
	t.Helper()
	if r.Attempts <= 0 || r.Requests <= 0 {
		t.Errorf("%s: %d attempts, %d requests; want some", name, r.Attempts, r.Requests)
	}
	if r.Errors != 0 {
		t.Errorf("%s: errors %v, want none", name, r.ErrorsByCode)
	}
	if r.Streams != r.Attempts+r.Errors {
		t.Errorf("%s: %d streams != %d attempts + %d errors", name, r.Streams, r.Attempts, r.Errors)
	}
	// A request's attempts are its retries plus the one that ended it, unless the
	// retries were used up: then every attempt was a retry.
	if r.Attempts != r.Requests+r.Retries-r.RetriesUsedUp {
		t.Errorf("%s: %d attempts != %d requests + %d retries - %d used up", name, r.Attempts, r.Requests, r.Retries, r.RetriesUsedUp)
	}
	if !(0 < r.P50us && r.P50us <= r.P90us && r.P90us <= r.P99us && r.P99us <= r.MaxUs) {
		t.Errorf("%s: percentiles not ordered: p50 %v p90 %v p99 %v max %v", name, r.P50us, r.P90us, r.P99us, r.MaxUs)
	}
	// Every attempt sends its request headers; all but an exhaustion answer also
	// their response headers; a body only when the server asks (bodies counts them).
	if want := 2*r.Attempts - r.Exhausted + bodies; r.Messages != want {
		t.Errorf("%s: %d messages answered, want %d for %d attempts (%d exhausted, %d bodies)", name, r.Messages, want, r.Attempts, r.Exhausted, bodies)
	}
	if !(0 < r.MsgP50us && r.MsgP50us <= r.MsgP99us && r.MsgP99us <= r.MsgMaxUs && r.MsgMaxUs <= r.MaxUs) {
		t.Errorf("%s: message percentiles not ordered or longer than a stream: p50 %v p99 %v max %v (stream max %v)", name, r.MsgP50us, r.MsgP99us, r.MsgMaxUs, r.MaxUs)
	}
	if r.Elapsed <= 0 || r.AttemptsPerSec <= 0 {
		t.Errorf("%s: elapsed %v, attempts/s %v", name, r.Elapsed, r.AttemptsPerSec)
	}
}

func TestLoadCountsWhatTheServerAnswers(t *testing.T) {
	tests := []struct {
		name          string
		keys          int
		args          []string
		wantRetries   bool
		wantExhausted bool
		wantUsedUp    bool
	}{
		{name: "healthy keys pass", keys: 2, args: []string{"--fail-rate", "0"}},
		// Every attempt fails: attempt 1 and 2 fail over, attempt 3 finds both keys
		// cooling and gets the exhaustion answer, as does every later request.
		{name: "failing keys exhaust a 2-key pool", keys: 2, args: []string{"--fail-rate", "1", "--fail-status", "429"},
			wantRetries: true, wantExhausted: true},
		// With no retry left, a marked answer goes to the client as Envoy would send it.
		{name: "a marker on the last attempt uses up the retries", keys: 2,
			args:        []string{"--fail-rate", "1", "--max-attempts", "1"},
			wantRetries: true, wantExhausted: true, wantUsedUp: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startKeypool(t, tt.keys)
			rep := runJSON(t, append([]string{"--target", addr, "--concurrency", "4", "--duration", "300ms"}, tt.args...)...)
			checkWellFormed(t, "keypool", rep.Keypool)
			if got := rep.Keypool.Retries > 0; got != tt.wantRetries {
				t.Errorf("retries = %d, want some: %v", rep.Keypool.Retries, tt.wantRetries)
			}
			if got := rep.Keypool.Exhausted > 0; got != tt.wantExhausted {
				t.Errorf("exhausted = %d, want some: %v", rep.Keypool.Exhausted, tt.wantExhausted)
			}
			if got := rep.Keypool.RetriesUsedUp > 0; got != tt.wantUsedUp {
				t.Errorf("retries used up = %d, want some: %v", rep.Keypool.RetriesUsedUp, tt.wantUsedUp)
			}
			if rep.Baseline != nil || rep.Ratio != nil {
				t.Errorf("baseline %v, ratio %v without --baseline", rep.Baseline, rep.Ratio)
			}
		})
	}
}

func TestBaselineRunsTheSameLoadAgainstAPassThrough(t *testing.T) {
	tests := []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"in process", func(*testing.T) []string { return []string{"--baseline"} }},
		{"own server", func(t *testing.T) []string { return []string{"--baseline-target", serve(t, extproc.PassThrough{})} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startKeypool(t, 2)
			rep := runJSON(t, append([]string{"--target", addr, "--concurrency", "2", "--duration", "300ms"}, tt.args(t)...)...)
			checkWellFormed(t, "keypool", rep.Keypool)
			if rep.Baseline == nil || rep.Ratio == nil {
				t.Fatalf("no baseline or ratio in %+v", rep)
			}
			checkWellFormed(t, "baseline", *rep.Baseline)
			if want := rep.Keypool.AttemptsPerSec / rep.Baseline.AttemptsPerSec; rep.Ratio.AttemptsPerSec != want {
				t.Errorf("attempts/s ratio = %v, want %v", rep.Ratio.AttemptsPerSec, want)
			}
		})
	}
}

func TestTableNamesEveryFigure(t *testing.T) {
	addr := startKeypool(t, 2)
	var stdout, stderr bytes.Buffer
	args := []string{"--target", addr, "--concurrency", "2", "--duration", "300ms", "--warmup", "0", "--baseline"}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr: %s", err, stderr.String())
	}
	for _, want := range []string{"envoy-keypool", "pass-through", "ratio", "requests/s", "attempts/s", "streams/s",
		"message p50", "message p99", "message max", "stream p50", "stream p90", "stream p99",
		"server CPU per 1,000 attempts", "retries", "exhausted", "errors"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestFlagsAreChecked(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "--target is required"},
		{[]string{"--target", "x:1", "--concurrency", "0"}, "--concurrency"},
		{[]string{"--target", "x:1", "--fail-rate", "1.5"}, "--fail-rate"},
		{[]string{"--target", "x:1", "--fail-status", "42"}, "--fail-status"},
		{[]string{"--target", "x:1", "--duration", "0s"}, "--duration"},
		{[]string{"--target", "x:1", "--pool", ""}, "--pool"},
		{[]string{"--target", "x:1", "extra"}, "unexpected arguments"},
		{[]string{"--target", "x:1", "--rate", "-1"}, "--rate"},
		{[]string{"--target", "x:1", "--warmup", "-1s"}, "--warmup"},
		{[]string{"--target", "x:1", "--baseline-pid", "12"}, "--baseline-pid needs --baseline-target"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one naming %q", err, tt.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}

func TestUnreachableTargetIsOneError(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"--target", addr, "--duration", "300ms", "--warmup", "0"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "connect to "+addr) {
		t.Errorf("err = %v, want a connection error naming %s", err, addr)
	}
}

func TestRequestsEndTheRunAtThatCount(t *testing.T) {
	addr := startKeypool(t, 2)
	rep := runJSON(t, "--target", addr, "--concurrency", "4", "--duration", "1m", "--requests", "50")
	checkWellFormed(t, "keypool", rep.Keypool)
	if rep.Keypool.Requests != 50 {
		t.Errorf("%d requests, want exactly the 50 asked for", rep.Keypool.Requests)
	}
}
