package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"
)

// benchOptions is the bench command's command line.
type benchOptions struct {
	keypoolBin  string
	loadBin     string
	redisServer string
	goResults   string
	jsonOut     string
	dir         string
	rounds      int
	duration    time.Duration
	warmup      time.Duration
	rate        float64
	failRate    float64
	keys        int
	conns       int
	pin         bool
	serverCPU   int
	driverCPU   int
}

func parseBenchOptions(args []string, stderr io.Writer) (benchOptions, error) {
	var o benchOptions
	fs := flag.NewFlagSet("keypool-load bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.keypoolBin, "keypool-bin", "", "the envoy-keypool binary to measure (required)")
	fs.StringVar(&o.loadBin, "load-bin", "", "the keypool-load binary that drives each run and serves the pass-through (default: this one)")
	fs.StringVar(&o.redisServer, "redis-server", "redis-server", "redis-server to start for the Redis rows; \"\" or not found: in-memory rows only")
	fs.StringVar(&o.goResults, "go-results", "", "`go test -bench` output to summarise first (medians per benchmark)")
	fs.StringVar(&o.jsonOut, "json", "", "also write every run and the summary as JSON to this file")
	fs.StringVar(&o.dir, "dir", "", "directory for the servers' configurations and logs (default: a new temporary one, removed at the end)")
	fs.IntVar(&o.rounds, "rounds", 5, "rounds; each runs every case once, and figures are medians over rounds")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "measurement window of each run")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "warm-up of each run, before its window")
	fs.Float64Var(&o.rate, "rate", 3600, "attempts per second of the fixed-rate runs, where CPU per attempt is compared")
	fs.Float64Var(&o.failRate, "fail-rate", 0.1, "share of attempts answered 429 in the failover runs")
	fs.IntVar(&o.keys, "keys", 4, "keys in the pool")
	fs.IntVar(&o.conns, "conns", 2, "gRPC connections of the load tool (Envoy: one per worker thread)")
	fs.BoolVar(&o.pin, "pin", true, "pin the servers and the load tool to one CPU each with taskset, when present")
	fs.IntVar(&o.serverCPU, "server-cpu", 0, "CPU the servers run on")
	fs.IntVar(&o.driverCPU, "driver-cpu", 1, "CPU the load tool runs on")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if o.keypoolBin == "" {
		errs = append(errs, errors.New("--keypool-bin is required"))
	}
	if o.rounds < 1 {
		errs = append(errs, fmt.Errorf("--rounds %d: want at least 1", o.rounds))
	}
	if o.duration <= 0 || o.warmup < 0 {
		errs = append(errs, errors.New("--duration must be positive and --warmup not negative"))
	}
	if !(o.rate > 0) {
		errs = append(errs, fmt.Errorf("--rate %v: want attempts per second", o.rate))
	}
	if !(o.failRate > 0 && o.failRate < 1) {
		errs = append(errs, fmt.Errorf("--fail-rate %v: want a share in (0, 1)", o.failRate))
	}
	if o.keys < 1 || o.conns < 1 {
		errs = append(errs, errors.New("--keys and --conns must be at least 1"))
	}
	if o.serverCPU < 0 || o.driverCPU < 0 || (o.pin && o.serverCPU == o.driverCPU) {
		errs = append(errs, errors.New("--server-cpu and --driver-cpu must be two different CPUs"))
	}
	return o, errors.Join(errs...)
}

// The cases every round runs, against every server.
var (
	benchLoads = []benchLoad{
		{Name: "rate", Streams: 32, Paced: true},
		{Name: "closed-32", Streams: 32},
		{Name: "closed-256", Streams: 256},
	}
	benchMixes   = []string{mixHealthy, mixFailover}
	benchServers = []string{serverPassThrough, serverMemory, serverRedis}
)

const (
	mixHealthy        = "healthy"
	mixFailover       = "failover"
	serverPassThrough = "pass-through"
	serverMemory      = "memory"
	serverRedis       = "redis"
)

type benchLoad struct {
	Name    string `json:"name"`
	Streams int    `json:"streams"`
	Paced   bool   `json:"paced"` // at --rate attempts/s; else a closed loop
}

// benchRun is one run of the load tool against one server.
type benchRun struct {
	Round  int     `json:"round"`
	Load   string  `json:"load"`
	Mix    string  `json:"mix"`
	Server string  `json:"server"`
	Load1  float64 `json:"load_average_1m"` // when the run started
	Result result  `json:"result"`
}

// benchBatch is everything one bench command measured.
type benchBatch struct {
	Machine    machine            `json:"machine"`
	Options    benchReportOptions `json:"options"`
	GoBench    []goBench          `json:"go_benchmarks,omitempty"`
	IdleRedis  map[string]int64   `json:"idle_redis_commands,omitempty"` // in one window with no load
	IdleWindow float64            `json:"idle_window_seconds,omitempty"`
	Runs       []benchRun         `json:"runs"`
	Summary    *benchSummary      `json:"summary"`
	Notes      []string           `json:"notes,omitempty"`
}

type benchReportOptions struct {
	Rounds   int         `json:"rounds"`
	Duration string      `json:"duration"`
	Warmup   string      `json:"warmup"`
	Rate     float64     `json:"rate"`
	FailRate float64     `json:"fail_rate"`
	Keys     int         `json:"keys"`
	Conns    int         `json:"conns"`
	Pinning  string      `json:"pinning"`
	Loads    []benchLoad `json:"loads"`
}

// runBench is the bench command: every case of benchLoads × benchMixes against the
// pass-through and envoy-keypool (in memory, and on Redis when redis-server is
// there), --rounds times, each round running the cases in turn so that a change in
// the machine's load hits every server alike; then the report.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	o, err := parseBenchOptions(args, stderr)
	if err != nil {
		return err
	}
	batch := &benchBatch{Machine: describeMachine(), Options: benchReportOptions{
		Rounds: o.rounds, Duration: o.duration.String(), Warmup: o.warmup.String(), Rate: o.rate,
		FailRate: o.failRate, Keys: o.keys, Conns: o.conns, Loads: benchLoads,
	}}
	if o.goResults != "" {
		f, err := os.Open(o.goResults)
		if err != nil {
			return err
		}
		batch.GoBench, err = readGoBench(f, o.goResults)
		f.Close()
		if err != nil {
			return err
		}
	}
	if o.loadBin == "" {
		if o.loadBin, err = os.Executable(); err != nil {
			return fmt.Errorf("--load-bin: %w", err)
		}
	}
	dir := o.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "keypool-bench-"); err != nil {
			return err
		}
		defer func() {
			if err != nil { // the servers' logs tell why
				fmt.Fprintf(stderr, "keypool-load bench: logs kept in %s\n", dir)
				return
			}
			os.RemoveAll(dir)
		}()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pin := newPinning(o.pin)
	batch.Options.Pinning = pin.String()
	if pin.taskset != "" {
		batch.Options.Pinning = fmt.Sprintf("servers on CPU %d, load tool on CPU %d (taskset); Redis unpinned", o.serverCPU, o.driverCPU)
	}

	servers, stop, err := startBenchServers(ctx, o, pin, dir, batch)
	defer stop()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "keypool-load bench: %d rounds × %d runs of %s (+%s warm-up); logs in %s\n",
		o.rounds, len(benchLoads)*len(benchMixes)*len(servers), o.duration, o.warmup, dir)

	if r, ok := servers[serverRedis]; ok {
		// What Redis runs with no load at all (the replica's health checks and
		// upkeep), to tell it from what attempts cost.
		m := &meter{redis: newRedisClient(r.redis)}
		start := time.Now()
		err := m.start(ctx)
		if err == nil {
			sleep(ctx, o.duration)
			var u usage
			u, err = m.stop(ctx)
			batch.IdleRedis, batch.IdleWindow = u.redis, time.Since(start).Seconds()
		}
		m.close()
		if err != nil {
			return fmt.Errorf("idle Redis window: %w", err)
		}
	}

	for round := range o.rounds {
		for _, load := range benchLoads {
			for _, mix := range benchMixes {
				// Rotate which server goes first, so that none always runs right after
				// the same neighbour.
				for i := range benchServers {
					name := benchServers[(i+round)%len(benchServers)]
					s, ok := servers[name]
					if !ok {
						continue
					}
					l1 := loadAverage()
					res, err := driveOnce(ctx, o, pin, load, mix, s)
					if err != nil {
						return fmt.Errorf("round %d, %s %s against %s: %w", round+1, load.Name, mix, name, err)
					}
					batch.Runs = append(batch.Runs, benchRun{Round: round + 1, Load: load.Name, Mix: mix, Server: name, Load1: l1, Result: res})
					fmt.Fprintf(stderr, "  round %d %-10s %-8s %-12s %7.0f attempts/s  msg p99 %6.0fµs  cpu %5.1fms/1000  (load %.1f)\n",
						round+1, load.Name, mix, name, res.AttemptsPerSec, res.MsgP99us, res.ServerCPUPer1000Attempts, l1)
				}
			}
		}
	}
	batch.Summary = summarise(batch)
	if o.jsonOut != "" {
		data, err := json.MarshalIndent(batch, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonOut, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	return writeBenchReport(stdout, batch)
}

// benchServer is a server under load with what its runs need to read.
type benchServer struct {
	*server
	redis string // the Redis it uses, "" for none
}

// startBenchServers starts the pass-through and the envoy-keypool servers (and
// Redis). stop stops whatever was started, also after an error.
func startBenchServers(ctx context.Context, o benchOptions, pin pinning, dir string, batch *benchBatch) (map[string]*benchServer, func(), error) {
	var started []*process
	stop := func() {
		for i := len(started) - 1; i >= 0; i-- {
			started[i].stop()
		}
	}
	servers := map[string]*benchServer{}
	pt, err := startPassThroughProcess(ctx, pin, o.serverCPU, o.loadBin, dir)
	if err != nil {
		return nil, stop, err
	}
	started = append(started, pt.process)
	servers[serverPassThrough] = &benchServer{server: pt}
	mem, err := startKeypoolProcess(ctx, pin, o.serverCPU, o.keypoolBin, dir, "keypool-memory", o.keys, "")
	if err != nil {
		return nil, stop, err
	}
	started = append(started, mem.process)
	servers[serverMemory] = &benchServer{server: mem}

	redisPath := ""
	if o.redisServer != "" {
		redisPath, _ = exec.LookPath(o.redisServer)
	}
	if redisPath == "" {
		batch.Notes = append(batch.Notes, fmt.Sprintf("no Redis rows: redis-server %q not found", o.redisServer))
		return servers, stop, nil
	}
	rp, raddr, err := startRedis(ctx, pin, -1, redisPath, dir)
	if err != nil {
		return nil, stop, err
	}
	started = append(started, rp)
	rs, err := startKeypoolProcess(ctx, pin, o.serverCPU, o.keypoolBin, dir, "keypool-redis", o.keys, raddr)
	if err != nil {
		return nil, stop, err
	}
	started = append(started, rs.process)
	servers[serverRedis] = &benchServer{server: rs, redis: raddr}
	return servers, stop, nil
}

// driveOnce runs the load tool once, in its own process on the driver's CPU, against
// s, and reads its JSON report.
func driveOnce(ctx context.Context, o benchOptions, pin pinning, load benchLoad, mix string, s *benchServer) (result, error) {
	args := []string{o.loadBin, "--json", "--target", s.addr, "--server-pid", strconv.Itoa(s.pid()),
		"--duration", o.duration.String(), "--warmup", o.warmup.String(),
		"--concurrency", strconv.Itoa(load.Streams), "--conns", strconv.Itoa(o.conns)}
	if load.Paced {
		args = append(args, "--rate", strconv.FormatFloat(o.rate, 'f', -1, 64))
	}
	if mix == mixFailover {
		args = append(args, "--fail-rate", strconv.FormatFloat(o.failRate, 'f', -1, 64), "--fail-status", "429")
	}
	if s.redis != "" {
		args = append(args, "--redis", s.redis)
	}
	cmd := pin.command(o.driverCPU, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return result{}, fmt.Errorf("%w: %s", err, bytes.TrimSpace(errOut.Bytes()))
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		return result{}, fmt.Errorf("the load tool's report: %w", err)
	}
	return rep.Keypool, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
