package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// asMainEnv makes the test binary run keypool-load's main instead of the tests, so
// that the bench and soak commands can start it as the load tool and the
// pass-through.
const asMainEnv = "KEYPOOL_LOAD_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// buildKeypool builds the envoy-keypool binary into a temporary directory.
func buildKeypool(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "envoy-keypool")
	build := exec.Command("go", "build", "-o", bin, "./cmd/envoy-keypool")
	build.Dir = filepath.Join("..", "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// selfAsLoadTool is this test binary, run as keypool-load by its children.
func selfAsLoadTool(t testing.TB) string {
	t.Helper()
	t.Setenv(asMainEnv, "1")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

func TestBenchRunsEveryCaseAgainstEveryServer(t *testing.T) {
	keypoolBin := buildKeypool(t)
	loadBin := selfAsLoadTool(t)
	_, redisErr := exec.LookPath("redis-server")
	jsonOut := filepath.Join(t.TempDir(), "bench.json")
	goResults := filepath.Join(t.TempDir(), "bench-go.txt")
	if err := os.WriteFile(goResults, []byte("pkg: example.com/p\nBenchmarkX-2 \t 10 \t 100 ns/op\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	// 500ms per run: under -race on a busy machine a 256-stream closed loop has served
	// no attempt at all after 200ms.
	args := []string{"--keypool-bin", keypoolBin, "--load-bin", loadBin, "--rounds", "1", "--duration", "500ms",
		"--warmup", "50ms", "--rate", "300", "--keys", "2", "--json", jsonOut, "--go-results", goResults}
	if err := runBench(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, stderr.String())
	}

	var batch benchBatch
	data, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &batch); err != nil {
		t.Fatalf("bench JSON: %v", err)
	}
	servers := []string{serverPassThrough, serverMemory, serverRedis}
	if redisErr != nil {
		servers = servers[:2]
		t.Logf("no redis-server: %v", redisErr)
	}
	if want := len(benchLoads) * len(benchMixes) * len(servers); len(batch.Runs) != want {
		t.Fatalf("%d runs, want %d (every load, mix and server)", len(batch.Runs), want)
	}
	for _, r := range batch.Runs {
		res := r.Result
		if res.Errors != 0 || res.Attempts == 0 {
			t.Errorf("round %d %s %s %s: %d attempts, errors %v", r.Round, r.Load, r.Mix, r.Server, res.Attempts, res.ErrorsByCode)
		}
		if res.ServerCPUSeconds == nil || res.OtherCores == nil || *res.OtherCores < 0 {
			t.Errorf("%s %s %s: server CPU %v, other work %v cores", r.Load, r.Mix, r.Server, res.ServerCPUSeconds, res.OtherCores)
		}
		if (r.Server == serverRedis) != (res.RedisCommandsTotal != nil) {
			t.Errorf("%s %s %s: redis commands %v", r.Load, r.Mix, r.Server, res.RedisCommandsTotal)
		}
		// The pass-through never fails over; envoy-keypool does on a 429 mix. 10 % of
		// attempts fail: a run of at least 100 attempts has none with a chance of
		// 0.9^100 ≈ 3e-5, a shorter one (a slow machine) is not judged on it.
		wantsRetries := r.Mix == mixFailover && r.Server != serverPassThrough
		switch {
		case !wantsRetries && res.Retries > 0:
			t.Errorf("%s %s %s: %d retries, want none", r.Load, r.Mix, r.Server, res.Retries)
		case wantsRetries && res.Retries == 0 && res.Attempts >= 100:
			t.Errorf("%s %s %s: no retry in %d attempts", r.Load, r.Mix, r.Server, res.Attempts)
		case wantsRetries && res.Retries == 0:
			t.Logf("%s %s %s: no retry in only %d attempts (slow machine)", r.Load, r.Mix, r.Server, res.Attempts)
		}
	}
	if batch.Summary == nil || len(batch.Summary.Targets) < 4 || len(batch.Summary.Cases) != len(benchLoads)*len(benchMixes)*len(servers) {
		t.Fatalf("summary: %+v", batch.Summary)
	}
	if redisErr == nil {
		// A healthy first attempt reads the replica's local view: no command. (In
		// windows this short a stray upkeep command weighs a few per 1,000; one per
		// attempt would be 1,000.)
		last := batch.Summary.Targets[len(batch.Summary.Targets)-1]
		if last.Redis == nil || last.Redis.Value.Median >= 100 {
			t.Errorf("Redis commands on healthy attempts: %+v", last.Redis)
		}
	}
	for _, want := range []string{"## Targets (issue 12)", "other work on the machine", "CPU per attempt, healthy", "## Go benchmarks", "BenchmarkX", "## Every case", "| closed-256 | failover | memory |"} {
		if !strings.Contains(stdout.String(), strings.TrimPrefix(want, "Benchmark")) {
			t.Errorf("report lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestBenchFlagsAreChecked(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "--keypool-bin is required"},
		{[]string{"--keypool-bin", "x", "--rounds", "0"}, "--rounds"},
		{[]string{"--keypool-bin", "x", "--fail-rate", "0"}, "--fail-rate"},
		{[]string{"--keypool-bin", "x", "--server-cpu", "1", "--driver-cpu", "1"}, "two different CPUs"},
		{[]string{"--keypool-bin", "x", "--go-results", "/nonexistent/bench.txt"}, "/nonexistent/bench.txt"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runBench(context.Background(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one naming %q", err, tt.want)
			}
		})
	}
}
