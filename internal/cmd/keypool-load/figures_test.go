package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// batchOf builds a batch from per-round figures of the rate/closed cases.
func batchOf(rounds int, runs []benchRun) *benchBatch {
	return &benchBatch{
		Options: benchReportOptions{Rounds: rounds, Rate: 3600, FailRate: 0.1, Loads: benchLoads},
		Runs:    runs,
	}
}

func cpuRuns(load, mix, server string, cpus ...float64) []benchRun {
	var rs []benchRun
	for i, c := range cpus {
		rs = append(rs, benchRun{Round: i + 1, Load: load, Mix: mix, Server: server,
			Result: result{AttemptsPerSec: 1000, Attempts: 1000, Elapsed: 1, ServerCPUPer1000Attempts: c}})
	}
	return rs
}

func TestTargetIsTheMedianOfSameRoundRatios(t *testing.T) {
	var runs []benchRun
	// Per-round ratios 1.02, 1.10, 0.90: the median is 1.02, within ≤ 1.02.
	runs = append(runs, cpuRuns("rate", mixHealthy, serverPassThrough, 100, 100, 200)...)
	runs = append(runs, cpuRuns("rate", mixHealthy, serverMemory, 102, 110, 180)...)
	// 1.50, 1.40, 1.60: median 1.50, 20 % past ≤ 1.25.
	runs = append(runs, cpuRuns("rate", mixFailover, serverPassThrough, 100, 100, 100)...)
	runs = append(runs, cpuRuns("rate", mixFailover, serverRedis, 150, 140, 160)...)
	// A round without the pass-through has no ratio: only rounds 1 and 2 count.
	runs = append(runs, cpuRuns("closed-32", mixHealthy, serverPassThrough, 1, 1)...)
	for i, a := range []float64{960, 1000, 10} {
		runs = append(runs, benchRun{Round: i + 1, Load: "closed-32", Mix: mixHealthy, Server: serverMemory,
			Result: result{AttemptsPerSec: a, Attempts: 1, Elapsed: 1}})
	}
	s := summarise(batchOf(3, runs))

	tests := []struct {
		name   string
		got    *verdict
		median float64
		n      int
		met    bool
		off    float64
	}{
		{"healthy CPU in memory", s.Targets[0].Memory, 1.02, 3, true, 0},
		{"failover CPU on Redis", s.Targets[1].Redis, 1.50, 3, false, 0.2},
		{"throughput in memory", s.Targets[2].Memory, 0.98, 2, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got == nil {
				t.Fatal("no verdict")
			}
			if !near(tt.got.Value.Median, tt.median) || tt.got.Value.N != tt.n {
				t.Errorf("median %v of %d rounds, want %v of %d", tt.got.Value.Median, tt.got.Value.N, tt.median, tt.n)
			}
			if tt.got.Met != tt.met || !near(tt.got.Off, tt.off) {
				t.Errorf("met %v off %v, want %v %v", tt.got.Met, tt.got.Off, tt.met, tt.off)
			}
		})
	}
	if v := s.Targets[0].Redis; v != nil {
		t.Errorf("healthy CPU on Redis judged without Redis runs: %+v", v)
	}
	// The throughput's per-round ratios 0.96 and 1.00: min and max as measured.
	if v := s.Targets[2].Memory.Value; !near(v.Min, 0.96) || !near(v.Max, 1.0) {
		t.Errorf("spread %v–%v, want 0.96–1.00", v.Min, v.Max)
	}
}

func TestRedisCommandsAreCountedBeyondIdle(t *testing.T) {
	total := func(n int64) *int64 { return &n }
	tests := []struct {
		name     string
		commands int64
		want     float64
		met      bool
	}{
		// Idle ran 10 commands in 5s; a 2.5s run is expected to run 5 on its own.
		{"only upkeep", 5, 0, true},
		{"fewer than idle", 3, 0, true},
		{"one command per attempt", 5 + 2000, 1000, false},
		{"two in 2,000 attempts", 7, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := batchOf(1, []benchRun{{Round: 1, Load: "rate", Mix: mixHealthy, Server: serverRedis,
				Result: result{Attempts: 2000, AttemptsPerSec: 800, Elapsed: 2.5, RedisCommandsTotal: total(tt.commands)}}})
			b.IdleRedis, b.IdleWindow = map[string]int64{"ping": 4, "hget": 6}, 5
			s := summarise(b)
			last := s.Targets[len(s.Targets)-1]
			if !strings.HasPrefix(last.Figure, "Redis commands") || last.Redis == nil {
				t.Fatalf("no Redis target: %+v", s.Targets)
			}
			if !near(last.Redis.Value.Median, tt.want) || last.Redis.Met != tt.met {
				t.Errorf("%v per 1,000 (met %v), want %v (met %v)", last.Redis.Value.Median, last.Redis.Met, tt.want, tt.met)
			}
		})
	}
}

func TestUsageIsPerAttemptAndPerCore(t *testing.T) {
	r := result{Attempts: 5000, Elapsed: 2}
	usage{server: 0.5, self: 1, hasServer: true, redis: map[string]int64{"evalsha": 3, "smembers": 2}, hasRedis: true}.fill(&r)
	if r.ServerCPUSeconds == nil || *r.ServerCPUSeconds != 0.5 {
		t.Fatalf("server CPU %v, want 0.5s", r.ServerCPUSeconds)
	}
	// 0.5 s over 5,000 attempts: 100 µs each, 100 ms per 1,000.
	if !near(r.ServerCPUPer1000Attempts, 100) || !near(r.ServerCores, 0.25) || !near(r.DriverCores, 0.5) {
		t.Errorf("%v ms per 1,000, %v server cores, %v driver cores; want 100, 0.25, 0.5", r.ServerCPUPer1000Attempts, r.ServerCores, r.DriverCores)
	}
	if r.RedisCommandsTotal == nil || *r.RedisCommandsTotal != 5 {
		t.Errorf("redis commands %v, want 5", r.RedisCommandsTotal)
	}

	// The rest of the machine is what neither the server, the load tool nor
	// Redis ran: 3.5 s busy - 0.5 - 1 - 0.5 = 1.5 s over 2 s.
	o := result{Attempts: 5000, Elapsed: 2}
	usage{server: 0.5, self: 1, machine: 3.5, hasServer: true, redisCPU: 0.5, hasRedis: true}.fill(&o)
	if o.OtherCores == nil || !near(*o.OtherCores, 0.75) {
		t.Errorf("other work %v cores, want 0.75", o.OtherCores)
	}
	// Ticks are coarser than a short window: never below zero.
	usage{server: 0.5, self: 1, machine: 1.4, hasServer: true}.fill(&o)
	if o.OtherCores == nil || *o.OtherCores != 0 {
		t.Errorf("other work %v cores, want 0", o.OtherCores)
	}

	k, b := r, result{Attempts: 5000, Elapsed: 2}
	usage{server: 0.4, hasServer: true}.fill(&b)
	if got := ratiosOf(k, b).CPUPerAttempt; !near(got, 1.25) {
		t.Errorf("CPU ratio %v, want 1.25", got)
	}
	if got := ratiosOf(k, result{Attempts: 1}).CPUPerAttempt; got != 0 {
		t.Errorf("CPU ratio without the baseline's CPU = %v, want 0 (none)", got)
	}
}

func TestMeterReadsTheServersCPUTime(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "4242"), 0o755); err != nil {
		t.Fatal(err)
	}
	// /proc/PID/stat: utime (field 14) 150 and stime (15) 50 ticks of 10 ms = 2 s.
	fields := []string{"4242", "(envoy-keypool)", "S"}
	for i := 4; i <= 52; i++ {
		v := "0"
		switch i {
		case 14:
			v = "150"
		case 15:
			v = "50"
		}
		fields = append(fields, v)
	}
	stat := filepath.Join(root, "4242", "stat")
	if err := os.WriteFile(stat, []byte(strings.Join(fields, " ")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// /proc/stat, in ticks: user nice system idle iowait irq softirq steal; what
	// processes ran is user, nice, system and steal.
	machineStat := func(user, system, idle int) {
		t.Helper()
		line := fmt.Sprintf("cpu  %d 10 %d %d 500 5 5 0 0 0\n", user, system, idle)
		if err := os.WriteFile(filepath.Join(root, "stat"), []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	machineStat(1000, 200, 9000)
	fs, err := procfs.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	m := &meter{proc: fs, serverPID: 4242}
	if err := m.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	fields[13], fields[14] = "400", "100" // 5 s
	machineStat(1500, 400, 9900)          // 7 s busy more
	if err := os.WriteFile(stat, []byte(strings.Join(fields, " ")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := m.stop(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !u.hasServer || !near(u.server, 3) || !near(u.machine, 7) {
		t.Errorf("CPU over the window: server %vs, machine %vs; want 3s, 7s", u.server, u.machine)
	}
	if _, err := (&meter{proc: fs, serverPID: 99}).processCPU(); err == nil || !strings.Contains(err.Error(), "server process 99") {
		t.Errorf("missing process: err = %v, want one naming it", err)
	}
}

func TestCommandStatsAreReadPerCommand(t *testing.T) {
	before, err := parseCommandStats("# Commandstats\r\ncmdstat_ping:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_info:calls=1,usec=50,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n")
	if err != nil {
		t.Fatal(err)
	}
	after, err := parseCommandStats("# Commandstats\r\ncmdstat_ping:calls=4,usec=12\r\ncmdstat_info:calls=2,usec=99\r\n" +
		"cmdstat_evalsha:calls=10,usec=300\r\ncmdstat_client|setinfo:calls=2,usec=4\r\n")
	if err != nil {
		t.Fatal(err)
	}
	got := commandsSince(before, after)
	want := map[string]int64{"ping": 1, "evalsha": 10, "client|setinfo": 2}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("commands = %v, want %v (the meter's INFO left out)", got, want)
	}
	if _, err := parseCommandStats("cmdstat_get:calls=x,usec=1"); err == nil {
		t.Error("a malformed count was read")
	}
}

func TestRedisCPUIsReadFromInfo(t *testing.T) {
	tests := []struct {
		name, info string
		want       float64
		wantErr    bool
	}{
		{"both", "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:2.500000\r\nused_cpu_sys_children:9.0\r\n", 3.75, false},
		{"with commandstats", "# Commandstats\r\ncmdstat_ping:calls=3,usec=9\r\n\r\n# CPU\r\nused_cpu_sys:0.5\r\nused_cpu_user:0.25\r\n", 0.75, false},
		{"missing", "# Commandstats\r\ncmdstat_ping:calls=3,usec=9\r\n", 0, true},
		{"malformed", "used_cpu_sys:x\r\nused_cpu_user:1\r\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRedisCPU(tt.info)
			if (err != nil) != tt.wantErr || !near(got, tt.want) {
				t.Errorf("parseRedisCPU = %v, %v; want %v (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// The bench's own processes keep a 2-CPU machine's load average near 2: what
// says the machine was busy is the CPU other work used during the runs.
func TestMachineIsBusyWhenOtherWorkTakesCPU(t *testing.T) {
	tests := []struct {
		name  string
		load  float64
		other []float64 // nil: a batch that did not measure it
		busy  bool
	}{
		{"quiet, the bench's own load", 2.5, []float64{0.01, 0.03, 0.02}, false},
		{"other work alongside", 2.5, []float64{0.4, 0.6, 0.5}, true},
		{"older batch, low load", 1.5, nil, false},
		{"older batch, high load", 7.9, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &benchSummary{Load1: spreadOf([]float64{tt.load}), OtherCores: spreadOf(tt.other)}
			if got := machineWasBusy(s, 2); got != tt.busy {
				t.Errorf("busy = %v, want %v", got, tt.busy)
			}
		})
	}
}

func TestGoBenchmarksAreSummarisedByMedian(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/envoy-keypool/envoy-keypool/keypool
cpu: AMD EPYC
BenchmarkPick/priority/5-2         	 1000000	       150 ns/op	       0 B/op	       0 allocs/op
BenchmarkPick/priority/5-2         	 1000000	       170 ns/op	       0 B/op	       0 allocs/op
BenchmarkPick/priority/5-2         	 1000000	       160 ns/op	       0 B/op	       0 allocs/op
BenchmarkPickSizeRatio/weighted-2  	     200	      3000 ns/op	         0.75 ratio
PASS
ok  	github.com/envoy-keypool/envoy-keypool/keypool	3.1s
pkg: github.com/envoy-keypool/envoy-keypool/extproc
BenchmarkProcessStream/keypool/healthy-2 	3000	 300000 ns/op	 332451 cpu-ns/op	 19730 B/op	 327 allocs/op
BenchmarkProcessStream/keypool/healthy-2 	3000	 320000 ns/op	 352451 cpu-ns/op	 19730 B/op	 327 allocs/op
ok  	github.com/envoy-keypool/envoy-keypool/extproc	9.9s
`
	got, err := readGoBench(strings.NewReader(out), "bench-go.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d benchmarks, want 3: %+v", len(got), got)
	}
	pick := got[0]
	if !strings.HasSuffix(pick.Pkg, "/keypool") || pick.Name != "Pick/priority/5-2" || pick.Runs != 3 {
		t.Errorf("first = %s %s ×%d", pick.Pkg, pick.Name, pick.Runs)
	}
	if pick.Medians["ns/op"] != 160 || pick.Medians["allocs/op"] != 0 || strings.Join(pick.Units, ",") != "ns/op,B/op,allocs/op" {
		t.Errorf("medians %v units %v, want 160 ns/op and 0 allocs/op in go test's order", pick.Medians, pick.Units)
	}
	if got[1].Medians["ratio"] != 0.75 {
		t.Errorf("a reported metric: %v, want ratio 0.75", got[1].Medians)
	}
	if s := got[2]; !strings.HasSuffix(s.Pkg, "/extproc") || s.Medians["cpu-ns/op"] != 342451 || s.Medians["ns/op"] != 310000 {
		t.Errorf("even count: %s %v, want the mean of the middle two", s.Pkg, s.Medians)
	}
	var table strings.Builder
	writeGoBenchTable(&table, got)
	for _, want := range []string{"| Pick/priority/5-2 | 3 | 160 ns/op, 0 B/op, 0 allocs/op |", "310.00 µs/op, 342.45 µs cpu/op", "0.75 ratio"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}

	for _, failed := range []string{"--- FAIL: BenchmarkPick\nFAIL\n", "panic: boom\n", "FAIL: go test -bench\n"} {
		if _, err := readGoBench(strings.NewReader(out+failed), "bench-go.txt"); err == nil || !strings.Contains(err.Error(), "failed") {
			t.Errorf("output ending %q: err = %v, want the benchmarks reported failed", failed, err)
		}
	}
}

func TestPacerHandsOutNoMoreThanTheRate(t *testing.T) {
	const rate = 2000.0
	ctx := context.Background()
	start := time.Now()
	p := startPacer(ctx, rate, 4, start.Add(300*time.Millisecond))
	var taken int
	for p.wait(ctx) {
		taken++
	}
	elapsed := time.Since(start).Seconds()
	// Tokens are due at rate from the start; the queue adds none of its own.
	if limit := int(rate*elapsed) + 1; taken > limit {
		t.Errorf("%d tokens in %.3fs, more than the rate allows (%d)", taken, elapsed, limit)
	}
	if taken == 0 {
		t.Error("no token handed out")
	}

	// Nobody takes tokens: beyond the queue's 4, each one due is missed.
	idle := startPacer(ctx, rate, 4, time.Now().Add(100*time.Millisecond))
	select {
	case <-idle.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the pacer did not end after its run")
	}
	if idle.missed.Load() == 0 {
		t.Error("no token missed while no worker took one")
	}
	var queued int
	for idle.wait(ctx) {
		queued++
	}
	if queued > 4 {
		t.Errorf("%d tokens queued, want at most the queue's 4", queued)
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{3600: "3,600", 999: "999", 1234567: "1,234,567", 0: "0"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}
