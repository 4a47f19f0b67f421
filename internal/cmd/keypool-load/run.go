package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"time"
)

// options is the parsed command line.
type options struct {
	target        string
	pool          string
	metadataKey   string
	requestID     string
	attemptCount  string
	retryMarker   string
	concurrency   int
	conns         int
	duration      time.Duration
	warmup        time.Duration
	requests      int64
	rate          float64
	streamTimeout time.Duration
	failRate      float64
	failStatus    int
	maxAttempts   int
	baseline      bool
	baselineAddr  string
	serverPID     int
	baselinePID   int
	redisAddr     string
	json          bool
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("keypool-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.target, "target", "", "host:port of the envoy-keypool ext_proc listener (required)")
	fs.StringVar(&o.pool, "pool", "openai", "pool named in the stream's initial metadata")
	fs.StringVar(&o.metadataKey, "metadata-key", "x-keypool-pool", "gRPC initial metadata key that names the pool")
	fs.StringVar(&o.requestID, "request-id-header", "x-request-id", "header that correlates the attempts of a request")
	fs.StringVar(&o.attemptCount, "attempt-count-header", "x-envoy-attempt-count", "header that numbers the attempts")
	fs.StringVar(&o.retryMarker, "retry-marker", "x-keypool-retry", "response header that asks for a retry")
	fs.IntVar(&o.concurrency, "concurrency", 16, "concurrent workers, each one request at a time")
	fs.IntVar(&o.conns, "conns", 2, "gRPC connections the workers share (Envoy opens one per worker thread)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long workers start new requests after the warm-up (the measurement window)")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "load before the measurement window, counted nowhere (connections, goroutine stacks and the heap settle)")
	fs.Int64Var(&o.requests, "requests", 0, "end the run after this many requests have started after the warm-up, or at the end of --duration if sooner; 0: at the end of --duration")
	fs.Float64Var(&o.rate, "rate", 0, "attempts per second, paced across the workers (an open loop); 0: each worker sends back to back (a closed loop)")
	fs.DurationVar(&o.streamTimeout, "stream-timeout", 2*time.Second, "deadline of one stream")
	fs.Float64Var(&o.failRate, "fail-rate", 0, "share of attempts answered with --fail-status instead of 200, in [0, 1]")
	fs.IntVar(&o.failStatus, "fail-status", 429, "upstream status of a failing attempt")
	fs.IntVar(&o.maxAttempts, "max-attempts", 8, "attempts per request at most (Envoy's num_retries + 1)")
	fs.BoolVar(&o.baseline, "baseline", false, "also run the load against an in-process pass-through ext_proc server and print the ratio")
	fs.StringVar(&o.baselineAddr, "baseline-target", "", "host:port of a pass-through started with keypool-load passthrough, for a baseline in its own process (implies --baseline)")
	fs.IntVar(&o.serverPID, "server-pid", 0, "process id of the server at --target: its CPU time over the window (/proc/PID/stat) is reported per 1,000 attempts")
	fs.IntVar(&o.baselinePID, "baseline-pid", 0, "process id of the pass-through at --baseline-target, read as --server-pid")
	fs.StringVar(&o.redisAddr, "redis", "", "host:port of the Redis the server uses: the commands it ran over the window are reported (INFO commandstats)")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.baseline = o.baseline || o.baselineAddr != ""
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if o.target == "" {
		errs = append(errs, errors.New("--target is required"))
	}
	if o.pool == "" || o.metadataKey == "" || o.requestID == "" || o.attemptCount == "" || o.retryMarker == "" {
		errs = append(errs, errors.New("--pool and the header names must not be empty"))
	}
	if o.concurrency < 1 {
		errs = append(errs, fmt.Errorf("--concurrency %d: want at least 1", o.concurrency))
	}
	if o.conns < 1 {
		errs = append(errs, fmt.Errorf("--conns %d: want at least 1", o.conns))
	}
	if o.duration <= 0 || o.streamTimeout <= 0 {
		errs = append(errs, errors.New("--duration and --stream-timeout must be positive"))
	}
	if o.requests < 0 {
		errs = append(errs, fmt.Errorf("--requests %d: want 0 or more", o.requests))
	}
	if o.warmup < 0 {
		errs = append(errs, fmt.Errorf("--warmup %s: want 0 or more", o.warmup))
	}
	if !(o.rate >= 0) || math.IsInf(o.rate, 0) {
		errs = append(errs, fmt.Errorf("--rate %v: want attempts per second, or 0 for a closed loop", o.rate))
	}
	if o.serverPID < 0 || o.baselinePID < 0 {
		errs = append(errs, errors.New("--server-pid and --baseline-pid must be process ids"))
	}
	if o.baselinePID != 0 && o.baselineAddr == "" {
		errs = append(errs, errors.New("--baseline-pid needs --baseline-target"))
	}
	if !(o.failRate >= 0 && o.failRate <= 1) { // also refuses NaN
		errs = append(errs, fmt.Errorf("--fail-rate %v: want a share in [0, 1]", o.failRate))
	}
	if o.failStatus < 100 || o.failStatus > 599 {
		errs = append(errs, fmt.Errorf("--fail-status %d: want an HTTP status", o.failStatus))
	}
	if o.maxAttempts < 1 {
		errs = append(errs, fmt.Errorf("--max-attempts %d: want at least 1", o.maxAttempts))
	}
	return o, errors.Join(errs...)
}

// defaultOptions are the flags' defaults, for commands that drive the load with
// options of their own.
func defaultOptions() options {
	o, _ := parseOptions([]string{"--target", "unused"}, io.Discard)
	return o
}

// run drives the load the command line describes and writes the report to stdout.
// It returns early, with the figures so far discarded, when ctx ends.
//
// "keypool-load passthrough --listen ADDR" serves the pass-through baseline instead,
// until ctx ends, for --baseline-target.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "passthrough":
			return servePassThrough(ctx, args[1:], stdout, stderr)
		case "bench":
			return runBench(ctx, args[1:], stdout, stderr)
		case "soak":
			return runSoak(ctx, args[1:], stdout, stderr)
		}
	}
	o, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	rep := report{Options: reportOptions{
		Target: o.target, Pool: o.pool, Concurrency: o.concurrency, Conns: o.conns,
		Duration: o.duration.String(), Warmup: o.warmup.String(), Rate: o.rate,
		FailRate: o.failRate, FailStatus: o.failStatus, Baseline: baselineKind(o),
	}}
	m, err := newMeter(o.serverPID, o.redisAddr)
	if err != nil {
		return err
	}
	defer m.close()
	rep.Keypool, err = loadTarget(ctx, o, o.target, m)
	if err != nil {
		return fmt.Errorf("load against %s: %w", o.target, err)
	}
	if o.baseline {
		b, err := loadBaseline(ctx, o)
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		rep.Baseline = &b
		rep.Ratio = ratiosOf(rep.Keypool, b)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	if o.json {
		return rep.writeJSON(stdout)
	}
	return rep.writeTable(stdout)
}

// loadBaseline runs the load against the pass-through at --baseline-target, else
// against one the tool starts in its own process.
func loadBaseline(ctx context.Context, o options) (result, error) {
	if o.baselineAddr != "" {
		m, err := newMeter(o.baselinePID, "")
		if err != nil {
			return result{}, err
		}
		return loadTarget(ctx, o, o.baselineAddr, m)
	}
	addr, stop, err := startPassThrough("127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	defer stop()
	return loadTarget(ctx, o, addr, &meter{})
}

func baselineKind(o options) string {
	switch {
	case o.baselineAddr != "":
		return "pass-through at " + o.baselineAddr
	case o.baseline:
		return "pass-through in the load tool's process"
	}
	return ""
}

// servePassThrough is the passthrough command.
func servePassThrough(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keypool-load passthrough", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9201", "address to serve the pass-through ext_proc on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	addr, stop, err := startPassThrough(*listen)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(stdout, "keypool-load pass-through listening on %s\n", addr)
	<-ctx.Done()
	return nil
}
