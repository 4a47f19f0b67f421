package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/procfs"
)

// soakOptions is the soak command's command line.
type soakOptions struct {
	keypoolBin  string
	redisServer string
	state       string
	target      string
	serverPID   int
	admin       string
	duration    time.Duration
	interval    time.Duration
	plotPath    string
	jsonPath    string
	keys        int
	pin         bool
	serverCPU   int
	load        options // the driver's options for each interval
}

// maxSoak bounds a soak: it is a test run, never a service.
const maxSoak = 24 * time.Hour

func parseSoakOptions(args []string, stderr io.Writer) (soakOptions, error) {
	var o soakOptions
	fs := flag.NewFlagSet("keypool-load soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.keypoolBin, "keypool-bin", "", "the envoy-keypool binary to start and soak (or --target, --server-pid and --admin for a running one)")
	fs.StringVar(&o.state, "state", "memory", "state of the started server: memory, or redis (starts --redis-server)")
	fs.StringVar(&o.redisServer, "redis-server", "redis-server", "redis-server for --state redis")
	fs.StringVar(&o.target, "target", "", "host:port of a running envoy-keypool's ext_proc listener, instead of --keypool-bin")
	fs.IntVar(&o.serverPID, "server-pid", 0, "process id of the running envoy-keypool at --target (its RSS)")
	fs.StringVar(&o.admin, "admin", "", "host:port of the running envoy-keypool's admin listener (its goroutines, from /metrics)")
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the soak runs (at most 24h)")
	fs.DurationVar(&o.interval, "interval", 10*time.Second, "one sample (RSS, goroutines, p99 of the interval's messages) per interval")
	fs.StringVar(&o.plotPath, "plot", "soak.svg", "the plot to write: .svg or .png")
	fs.StringVar(&o.jsonPath, "json", "", "also write the samples as JSON to this file")
	fs.IntVar(&o.keys, "keys", 4, "keys in the started server's pool")
	fs.BoolVar(&o.pin, "pin", true, "pin the started server to --server-cpu with taskset, when present")
	fs.IntVar(&o.serverCPU, "server-cpu", 0, "CPU the started server runs on")
	fs.Float64Var(&o.load.rate, "rate", 1000, "attempts per second; 0: a closed loop")
	fs.IntVar(&o.load.concurrency, "concurrency", 32, "concurrent streams")
	fs.Float64Var(&o.load.failRate, "fail-rate", 0.1, "share of attempts answered 429 (failovers keep tried sets and marks coming)")
	fs.IntVar(&o.load.conns, "conns", 2, "gRPC connections")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	attach := o.target != "" || o.serverPID != 0 || o.admin != ""
	switch {
	case o.keypoolBin == "" && !attach:
		errs = append(errs, errors.New("--keypool-bin, or --target with --server-pid and --admin, is required"))
	case o.keypoolBin != "" && attach:
		errs = append(errs, errors.New("--keypool-bin starts a server: --target, --server-pid and --admin are for a running one"))
	case attach && (o.target == "" || o.serverPID <= 0 || o.admin == ""):
		errs = append(errs, errors.New("a running server needs --target, --server-pid and --admin"))
	}
	if o.state != "memory" && o.state != "redis" {
		errs = append(errs, fmt.Errorf("--state %q: want memory or redis", o.state))
	}
	if o.duration <= 0 || o.duration > maxSoak {
		errs = append(errs, fmt.Errorf("--duration %s: want more than 0 and at most %s", o.duration, maxSoak))
	}
	if o.interval <= 0 || o.interval > o.duration {
		errs = append(errs, fmt.Errorf("--interval %s: want more than 0 and at most --duration", o.interval))
	}
	if !(o.load.rate >= 0) || o.load.concurrency < 1 || o.load.conns < 1 || !(o.load.failRate >= 0 && o.load.failRate <= 1) || o.keys < 1 {
		errs = append(errs, errors.New("--rate, --concurrency, --conns, --fail-rate and --keys must be in range"))
	}
	d := defaultOptions()
	o.load.pool, o.load.metadataKey, o.load.requestID = d.pool, d.metadataKey, d.requestID
	o.load.attemptCount, o.load.retryMarker = d.attemptCount, d.retryMarker
	o.load.streamTimeout, o.load.failStatus, o.load.maxAttempts = d.streamTimeout, d.failStatus, d.maxAttempts
	o.load.duration = o.interval
	return o, errors.Join(errs...)
}

// runSoak is the soak command: load on one envoy-keypool for --duration, a sample
// of its RSS, goroutines and message p99 per --interval, then the plot.
func runSoak(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	o, err := parseSoakOptions(args, stderr)
	if err != nil {
		return err
	}
	if o.keypoolBin != "" {
		dir, err := os.MkdirTemp("", "keypool-soak-")
		if err != nil {
			return err
		}
		defer func() {
			if err != nil {
				fmt.Fprintf(stderr, "keypool-load soak: logs kept in %s\n", dir)
				return
			}
			os.RemoveAll(dir)
		}()
		pin := newPinning(o.pin)
		redisAddr := ""
		if o.state == "redis" {
			path, err := exec.LookPath(o.redisServer)
			if err != nil {
				return fmt.Errorf("--state redis: %w", err)
			}
			rp, addr, err := startRedis(ctx, pin, -1, path, dir)
			if err != nil {
				return err
			}
			defer rp.stop()
			redisAddr = addr
		}
		s, err := startKeypoolProcess(ctx, pin, o.serverCPU, o.keypoolBin, dir, "keypool-soak", o.keys, redisAddr)
		if err != nil {
			return err
		}
		defer s.stop()
		o.target, o.serverPID, o.admin = s.addr, s.pid(), s.admin
	}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return err
	}
	clients, closeClients, err := dialClients(ctx, o.load, o.target)
	if err != nil {
		return err
	}
	defer closeClients()

	fmt.Fprintf(stdout, "keypool-load soak: %s against %s (pid %d), one sample per %s, %g attempts/s over %d streams, %g %% 429\n",
		o.duration, o.target, o.serverPID, o.interval, o.load.rate, o.load.concurrency, 100*o.load.failRate)
	fmt.Fprintf(stdout, "%8s %10s %10s %12s %12s %12s %7s\n", "at", "RSS MiB", "goroutines", "heap MiB", "msg p99 µs", "attempts/s", "errors")
	var samples []soakSample
	start := time.Now()
	for time.Since(start) < o.duration && ctx.Err() == nil {
		// The server's figures are read near the end of the interval, while its
		// streams are open (between intervals the load pauses for an instant).
		var s soakSample
		read := make(chan error, 1)
		timer := time.AfterFunc(o.interval*9/10, func() {
			var err error
			if s.RSSBytes, err = residentBytes(fs, o.serverPID); err == nil {
				s.Goroutines, s.HeapBytes, err = runtimeMetrics(ctx, o.admin)
			}
			read <- err
		})
		r, err := loadWindow(ctx, o.load, clients, &meter{})
		if timer.Stop() {
			read <- errors.New("the interval ended before the server was read")
		}
		readErr := <-read
		if err != nil || readErr != nil {
			if ctx.Err() != nil {
				break // interrupted: plot what was measured
			}
			return errors.Join(err, readErr)
		}
		s.At, s.P99us, s.AttemptsPerSec, s.Errors = time.Since(start).Seconds(), r.MsgP99us, r.AttemptsPerSec, r.Errors
		samples = append(samples, s)
		fmt.Fprintf(stdout, "%7.0fs %10.1f %10.0f %12.1f %12.0f %12.0f %7d\n", s.At, float64(s.RSSBytes)/(1<<20),
			s.Goroutines, s.HeapBytes/(1<<20), s.P99us, s.AttemptsPerSec, s.Errors)
	}
	if len(samples) == 0 {
		return errors.New("no sample taken")
	}
	title := fmt.Sprintf("envoy-keypool soak: %g attempts/s, %d streams, %g %% 429", o.load.rate, o.load.concurrency, 100*o.load.failRate)
	if err := writeSoakPlot(o.plotPath, title, samples); err != nil {
		return err
	}
	if o.jsonPath != "" {
		data, err := json.MarshalIndent(samples, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonPath, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	first, last := samples[0], samples[len(samples)-1]
	fmt.Fprintf(stdout, "RSS %.1f → %.1f MiB, goroutines %.0f → %.0f, message p99 %.0f → %.0f µs; plot: %s\n",
		float64(first.RSSBytes)/(1<<20), float64(last.RSSBytes)/(1<<20), first.Goroutines, last.Goroutines,
		first.P99us, last.P99us, o.plotPath)
	return ctx.Err()
}

func residentBytes(fs procfs.FS, pid int) (int64, error) {
	p, err := fs.Proc(pid)
	if err != nil {
		return 0, fmt.Errorf("server process %d: %w", pid, err)
	}
	st, err := p.Stat()
	if err != nil {
		return 0, fmt.Errorf("server process %d: %w", pid, err)
	}
	return int64(st.ResidentMemory()), nil
}

// runtimeMetrics reads go_goroutines and go_memstats_heap_inuse_bytes from the
// server's /metrics.
func runtimeMetrics(ctx context.Context, admin string) (goroutines, heap float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("server metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("server metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, 0, fmt.Errorf("server metrics: %w", err)
	}
	gauge := func(name string) (float64, error) {
		f, ok := families[name]
		if !ok || len(f.GetMetric()) == 0 {
			return 0, fmt.Errorf("server metrics lack %s", name)
		}
		return f.GetMetric()[0].GetGauge().GetValue(), nil
	}
	if goroutines, err = gauge("go_goroutines"); err != nil {
		return 0, 0, err
	}
	if heap, err = gauge("go_memstats_heap_inuse_bytes"); err != nil {
		return 0, 0, err
	}
	return goroutines, heap, nil
}
