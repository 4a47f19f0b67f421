package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/freeport"
)

// pinning runs processes on given CPUs with taskset (util-linux), when the machine
// has it and at least two CPUs; otherwise processes run where the kernel puts them.
type pinning struct {
	taskset string // path; "" = not pinned
	why     string // why not pinned, for the report
}

func newPinning(enabled bool) pinning {
	if !enabled {
		return pinning{why: "pinning turned off (--pin=false)"}
	}
	if runtime.NumCPU() < 2 {
		return pinning{why: fmt.Sprintf("only %d CPU", runtime.NumCPU())}
	}
	path, err := exec.LookPath("taskset")
	if err != nil {
		return pinning{why: "taskset (util-linux) not found"}
	}
	return pinning{taskset: path}
}

// command is argv run on cpu (-1: anywhere). taskset execs argv, so the process
// keeps taskset's pid: the pid read for CPU time is the program's.
func (p pinning) command(cpu int, argv ...string) *exec.Cmd {
	if p.taskset == "" || cpu < 0 {
		return exec.Command(argv[0], argv[1:]...)
	}
	return exec.Command(p.taskset, append([]string{"--cpu-list", strconv.Itoa(cpu)}, argv...)...)
}

func (p pinning) String() string {
	if p.taskset == "" {
		return "not pinned: " + p.why
	}
	return "pinned with taskset"
}

// process is a child the tool started and waits for.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string // file holding its stdout and stderr
}

// startProcess starts cmd, its output appended to logPath, and waits until a line of
// its output matches ready; it returns the line's submatches.
func startProcess(ctx context.Context, name string, cmd *exec.Cmd, logPath string, ready *regexp.Regexp, timeout time.Duration) (*process, []string, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	found := make(chan []string, 1)
	go func() {
		defer logFile.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			fmt.Fprintln(logFile, sc.Text())
			if m := ready.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m:
				default:
				}
			}
		}
		_, _ = io.Copy(logFile, pr) // a line too long for the scanner
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	select {
	case m := <-found:
		return p, m, nil
	case <-p.done:
		return nil, nil, fmt.Errorf("%s exited before it was ready (log: %s)", name, logPath)
	case <-ctx.Done():
		p.stop()
		return nil, nil, fmt.Errorf("%s not ready in %s (log: %s): %w", name, timeout, logPath, ctx.Err())
	}
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// stop ends the process (SIGTERM, then SIGKILL after 10s) and waits for it.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

var (
	keypoolReady     = regexp.MustCompile(`envoy-keypool ready grpc=(\S+) admin=(\S+)`)
	passThroughReady = regexp.MustCompile(`keypool-load pass-through listening on (\S+)`)
	redisReady       = regexp.MustCompile(`Ready to accept connections`)
)

// startRedis runs redis-server on a free loopback port, without persistence, on cpu.
func startRedis(ctx context.Context, pin pinning, cpu int, path, dir string) (*process, string, error) {
	port, err := freeport.Port()
	if err != nil {
		return nil, "", err
	}
	cmd := pin.command(cpu, path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", dir, "--protected-mode", "yes")
	p, _, err := startProcess(ctx, "redis-server", cmd, filepath.Join(dir, "redis.log"), redisReady, 10*time.Second)
	if err != nil {
		return nil, "", err
	}
	return p, fmt.Sprintf("127.0.0.1:%d", port), nil
}

// keypoolConfig is an envoy-keypool configuration for the load: one OpenAI pool of
// keys fake keys, read from KEYPOOL_LOAD_KEY_n; rate_limited cooldowns of 1ms, so
// that a steady share of 429s keeps failing over instead of emptying the pool; JSON
// logs at info (the failover line is part of what a failure costs); state in Redis
// at redisAddr, or in memory when it is "".
func keypoolConfig(keys int, redisAddr string) string {
	s := "listen: {grpc: 127.0.0.1:0, admin: 127.0.0.1:0}\nlog: {level: info, format: json}\n"
	if redisAddr != "" {
		s += "state: {redis: {url: redis://" + redisAddr + "}}\n"
	}
	s += "pools:\n  - name: openai\n    provider: openai\n" +
		"    cooldowns: {rate_limited: {default: 1ms, min: 1ms, max: 1ms}}\n    keys:\n"
	for i := 1; i <= keys; i++ {
		s += fmt.Sprintf("      - {id: k%d, secret: env:KEYPOOL_LOAD_KEY_%d}\n", i, i)
	}
	return s
}

// keyEnv are the fake key values keypoolConfig reads.
func keyEnv(keys int) []string {
	env := make([]string, 0, keys)
	for i := 1; i <= keys; i++ {
		env = append(env, fmt.Sprintf("KEYPOOL_LOAD_KEY_%d=fake-load-key-%d-not-real", i, i))
	}
	return env
}

// server is an ext_proc server under load: envoy-keypool or the pass-through.
type server struct {
	*process
	addr, admin string
}

// startKeypoolProcess runs `bin serve` with keypoolConfig on cpu.
func startKeypoolProcess(ctx context.Context, pin pinning, cpu int, bin, dir, name string, keys int, redisAddr string) (*server, error) {
	cfg := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(cfg, []byte(keypoolConfig(keys, redisAddr)), 0o600); err != nil {
		return nil, err
	}
	cmd := pin.command(cpu, bin, "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), keyEnv(keys)...)
	p, m, err := startProcess(ctx, name, cmd, filepath.Join(dir, name+".log"), keypoolReady, 30*time.Second)
	if err != nil {
		return nil, err
	}
	return &server{process: p, addr: m[1], admin: m[2]}, nil
}

// startPassThroughProcess runs `loadBin passthrough` on cpu.
func startPassThroughProcess(ctx context.Context, pin pinning, cpu int, loadBin, dir string) (*server, error) {
	cmd := pin.command(cpu, loadBin, "passthrough", "--listen", "127.0.0.1:0")
	p, m, err := startProcess(ctx, "pass-through", cmd, filepath.Join(dir, "passthrough.log"), passThroughReady, 30*time.Second)
	if err != nil {
		return nil, err
	}
	return &server{process: p, addr: m[1]}, nil
}
