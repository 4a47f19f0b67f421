package testredis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/internal/freeport"
)

// SkipEnv is the environment variable that, set to 1, skips tests needing
// redis-server when it is not installed instead of failing them.
const SkipEnv = "KEYPOOL_SKIP_REDIS"

// startTimeout bounds how long a redis-server may take to answer PING.
const startTimeout = 15 * time.Second

// Option configures Start.
type Option func(*config)

type config struct {
	args     []string
	password string
	cluster  bool // a one-node cluster owning every slot (WithCluster)

	// Set by StartCluster and StartSentinel for their processes.
	clusterNode bool   // cluster-enabled; the slots are assigned by redis-cli
	replicaOf   string // host:port of the master to replicate
	sentinel    string // the content of a sentinel configuration: run as a Sentinel
	port        func() (int, error)
}

// WithArgs passes extra command-line arguments to redis-server, for example
// "--maxmemory", "10mb".
func WithArgs(args ...string) Option {
	return func(c *config) { c.args = append(c.args, args...) }
}

// WithPassword makes the server require a password (requirepass). Client and
// AssertNoSecrets use it; URL does not carry it.
func WithPassword(password string) Option {
	return func(c *config) { c.password = password }
}

// WithCluster runs the server in cluster mode as a one-node cluster owning every
// hash slot. Redis still enforces the cluster rules (CROSSSLOT errors for
// multi-key commands and scripts whose keys span slots), so it checks a data
// layout meant for Redis Cluster with a single process.
func WithCluster() Option {
	return func(c *config) { c.cluster = true }
}

// Server is a redis-server process owned by a test.
type Server struct {
	tb  testing.TB
	bin string
	dir string
	cfg config

	mu     sync.Mutex // protects the fields below
	port   int
	proc   *exec.Cmd
	exited chan struct{} // closed when proc has exited
	client *redis.Client
}

// Start runs a redis-server for the test and stops it when the test ends. It
// fails the test with "install redis-server" when the binary is missing, unless
// KEYPOOL_SKIP_REDIS=1, which skips it.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv(SkipEnv) == "1" {
			tb.Skipf("redis-server not found and %s=1: skipping", SkipEnv)
		}
		tb.Fatalf("redis-server not found in PATH: install redis-server (apt-get install redis-server), or set %s=1 to skip these tests", SkipEnv)
	}
	s := &Server{tb: tb, bin: bin, dir: tb.TempDir(), cfg: config{port: freeport.Port}}
	for _, o := range opts {
		o(&s.cfg)
	}
	tb.Cleanup(s.cleanup)

	// A free port found by listening on :0 can be taken by another process before
	// redis-server binds it: retry with a new port on that race.
	var lastErr error
	for range 5 {
		port, err := s.cfg.port()
		if err != nil {
			tb.Fatalf("testredis: find a free port: %v", err)
		}
		s.mu.Lock()
		s.port = port
		s.mu.Unlock()
		lastErr = s.start()
		if lastErr == nil {
			return s
		}
		if !errors.Is(lastErr, errAddrInUse) {
			break
		}
	}
	tb.Fatalf("testredis: %v", lastErr)
	return nil
}

// Addr is host:port of the server.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// URL is redis://host:port, without the password.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Password is the password the server requires, empty when none.
func (s *Server) Password() string { return s.cfg.password }

// Client is a go-redis client of the server, closed when the test ends. It
// reconnects by itself across Stop and Restart.
func (s *Server) Client() *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		s.client = redis.NewClient(&redis.Options{
			Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
			Password: s.cfg.password,
		})
	}
	return s.client
}

// Kill ends the server at once (SIGKILL, a crash: no shutdown, no handover)
// and waits for it to exit. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runningLocked() {
		return
	}
	_ = s.proc.Process.Kill()
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.tb.Fatalf("testredis: redis-server pid %d did not exit after SIGKILL", s.proc.Process.Pid)
	}
}

// Stop shuts the server down (SIGTERM, then SIGKILL if it lingers) and waits for
// it to exit. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.tb.Helper()
	if err := s.stop(); err != nil {
		s.tb.Fatalf("testredis: stop: %v", err)
	}
}

// Restart stops the server if it runs and starts an empty one on the same port:
// persistence is off, so nothing survives, like a Redis that lost its data.
func (s *Server) Restart() {
	s.tb.Helper()
	if err := s.stop(); err != nil {
		s.tb.Fatalf("testredis: restart: %v", err)
	}
	// Another process may take the port while it is free: retry until the deadline,
	// since a caller restarting a Redis needs its clients to find it where it was.
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			s.tb.Fatalf("testredis: restart: %v", err)
		}
	}
}

// LoseData empties a replica while it keeps replicating: it misses every write
// its master took so far, as a replica does that lagged behind when a failover
// promotes it (replication is asynchronous). It first waits until the replica
// has applied every write its master took so far, so that none of them arrives
// after the flush, then allows writes on the replica (replica-read-only no) and
// runs FLUSHALL there. Writes the master takes afterwards replicate as usual.
func (s *Server) LoseData() {
	s.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterDeadline)
	defer cancel()
	if err := s.catchUp(ctx); err != nil {
		s.tb.Fatalf("testredis: %v", err)
	}
	c := s.Client()
	if err := c.ConfigSet(ctx, "replica-read-only", "no").Err(); err != nil {
		s.tb.Fatalf("testredis: CONFIG SET replica-read-only no: %v", err)
	}
	if err := c.FlushAll(ctx).Err(); err != nil {
		s.tb.Fatalf("testredis: FLUSHALL on the replica: %v", err)
	}
}

// catchUp waits until the replica s has applied its master's replication
// stream up to the master's offset when catchUp was called.
func (s *Server) catchUp(ctx context.Context) error {
	info, err := replicationInfo(ctx, s)
	if err != nil {
		return fmt.Errorf("replication info of %s: %w", s.Addr(), err)
	}
	if info["role"] != "slave" {
		return fmt.Errorf("%s is not a replica (role %q)", s.Addr(), info["role"])
	}
	master := redis.NewClient(&redis.Options{
		Addr:     net.JoinHostPort(info["master_host"], info["master_port"]),
		Password: s.cfg.password,
	})
	defer master.Close()
	raw, err := master.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("replication info of the master of %s: %w", s.Addr(), err)
	}
	target, err := strconv.ParseInt(infoFields(raw)["master_repl_offset"], 10, 64)
	if err != nil {
		return fmt.Errorf("master_repl_offset of the master of %s: %w", s.Addr(), err)
	}
	return pollUntil(ctx, fmt.Sprintf("replica %s applied its master's writes up to offset %d", s.Addr(), target), func(ctx context.Context) bool {
		info, err := replicationInfo(ctx, s)
		if err != nil {
			return false
		}
		applied, err := strconv.ParseInt(info["slave_repl_offset"], 10, 64)
		return err == nil && applied >= target
	})
}

// Running reports whether the server process is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runningLocked()
}

func (s *Server) runningLocked() bool {
	if s.proc == nil {
		return false
	}
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

var errAddrInUse = errors.New("address already in use")

// start runs redis-server on s.port and waits until it answers PING.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	port := strconv.Itoa(s.port)
	logPath := filepath.Join(s.dir, "redis-"+port+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("create log file: %w", err)
	}
	defer logFile.Close()

	args := []string{
		"--port", port,
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
	}
	if s.cfg.sentinel != "" {
		// A Sentinel rewrites its configuration file: a fresh one on every start.
		conf := filepath.Join(s.dir, "sentinel-"+port+".conf")
		if err := os.WriteFile(conf, []byte(s.cfg.sentinel), 0o600); err != nil {
			return fmt.Errorf("write sentinel config: %w", err)
		}
		args = []string{conf, "--sentinel", "--port", port, "--bind", "127.0.0.1", "--dir", s.dir, "--daemonize", "no"}
	}
	if s.cfg.password != "" && s.cfg.sentinel == "" {
		args = append(args, "--requirepass", s.cfg.password, "--masterauth", s.cfg.password)
	}
	if s.cfg.cluster || s.cfg.clusterNode {
		nodes := "nodes-" + port + ".conf"
		// A restarted node must come back empty: forget its cluster identity too.
		if err := os.Remove(filepath.Join(s.dir, nodes)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove cluster config: %w", err)
		}
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", nodes)
	}
	if s.cfg.replicaOf != "" {
		host, p, _ := net.SplitHostPort(s.cfg.replicaOf)
		args = append(args, "--replicaof", host, p)
	}
	args = append(args, s.cfg.args...)

	proc := exec.Command(s.bin, args...)
	proc.Dir = s.dir
	proc.Stdout = logFile
	proc.Stderr = logFile
	if err := proc.Start(); err != nil {
		return fmt.Errorf("run %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = proc.Wait()
		close(exited)
	}()
	s.proc, s.exited = proc, exited

	if err := s.waitReady(exited); err != nil {
		log, _ := os.ReadFile(logPath)
		if !s.runningLocked() && strings.Contains(string(log), "already in use") {
			return fmt.Errorf("port %s: %w", port, errAddrInUse)
		}
		_ = s.stopLocked()
		return fmt.Errorf("redis-server on port %s: %w\nlog:\n%s", port, err, tail(string(log), 20))
	}
	return nil
}

// waitReady polls PING (and, in cluster mode, sets the slots up) until the server
// answers or exits, or startTimeout passes.
func (s *Server) waitReady(exited <-chan struct{}) error {
	c := redis.NewClient(&redis.Options{
		Addr:        net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Password:    s.cfg.password,
		DialTimeout: time.Second,
		MaxRetries:  -1,
	})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if lastErr = c.Ping(ctx).Err(); lastErr == nil {
			break
		}
		select {
		case <-exited:
			return errors.New("exited before answering PING")
		case <-ctx.Done():
			return fmt.Errorf("no answer to PING within %s: %w", startTimeout, lastErr)
		case <-tick.C:
		}
	}
	if !s.cfg.cluster {
		return nil
	}
	if err := c.ClusterAddSlotsRange(ctx, 0, 16383).Err(); err != nil {
		return fmt.Errorf("assign hash slots: %w", err)
	}
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster state not ok within %s: %s", startTimeout, info)
		case <-tick.C:
		}
	}
}

func (s *Server) stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *Server) stopLocked() error {
	if !s.runningLocked() {
		return nil
	}
	_ = s.proc.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = s.proc.Process.Kill()
	select {
	case <-s.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("redis-server pid %d did not exit", s.proc.Process.Pid)
	}
}

func (s *Server) cleanup() {
	s.mu.Lock()
	c := s.client
	s.client = nil
	s.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
	if err := s.stop(); err != nil {
		s.tb.Errorf("testredis: %v", err)
	}
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
