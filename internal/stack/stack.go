package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
	"github.com/envoy-keypool/envoy-keypool/internal/standin"
	"github.com/envoy-keypool/envoy-keypool/internal/syncbuf"
)

// Options configures Start.
type Options struct {
	// RepoRoot is the repository's top folder, where envoy/compose/ is. Required.
	RepoRoot string
	// KeypoolBinary is the built envoy-keypool to run. Required.
	KeypoolBinary string
	// Replicas is how many envoy-keypool processes to run. Default 2.
	Replicas int
	// RedisURL is the shared state; empty runs each replica with in-memory state.
	// Default: empty.
	RedisURL string
	// Log receives the replicas' and the stand-in's output as it happens (it is also
	// kept, see Stack.Logs). Default: nil, kept only.
	Log io.Writer
	// LogFormat is the replicas' log format, json or human. Default json.
	LogFormat string
	// Configure edits the envoy-keypool configuration (the YAML tree of
	// envoy/compose/keypool.yaml, after the listeners, log and state are set for this
	// machine); the stand-in then runs the Envoy configuration generated from the
	// edited file (envoy.Generate) instead of envoy/compose/envoy.yaml, so tests may
	// add pools or change their settings. Default: nil, the compose files as they are.
	Configure func(tree map[string]any)
}

// Key is one pool key as the stack configured it: its id and its fake value.
type Key struct {
	Pool, ID, Value string
}

// Stack is a running chain: client → stand-in → envoy-keypool replicas → mock.
type Stack struct {
	// URL is the stand-in's listener, where clients send requests
	// (URL+"/openai/v1", URL+"/anthropic").
	URL string
	// Mock programs and reads the mock provider.
	Mock *mockprovider.Client
	// Replicas are the envoy-keypool processes.
	Replicas []*Replica
	// Proxy is the Envoy stand-in.
	Proxy *standin.Proxy
	// Keys lists each pool's keys in priority order.
	Keys map[string][]Key
	// AdminToken is the token of the replicas' key API.
	AdminToken string

	mock      *httptest.Server
	stopProxy context.CancelFunc
	proxyLogs *syncbuf.Buffer
	tempDir   string
	closeOnce sync.Once
}

// Start brings the chain up and returns when every part is ready (the stand-in
// has health-checked every replica once).
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if opts.RepoRoot == "" || opts.KeypoolBinary == "" {
		return nil, errors.New("stack: RepoRoot and KeypoolBinary are required")
	}
	if opts.Replicas == 0 {
		opts.Replicas = 2
	}
	tempDir, err := os.MkdirTemp("", "envoy-keypool-stack-")
	if err != nil {
		return nil, err
	}
	s := &Stack{tempDir: tempDir, proxyLogs: &syncbuf.Buffer{}, Keys: map[string][]Key{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	mock := mockprovider.New()
	s.mock = httptest.NewServer(mock)
	s.Mock = &mockprovider.Client{BaseURL: s.mock.URL}

	cfgPath, env, cfg, err := s.writeKeypoolConfig(opts)
	if err != nil {
		return nil, err
	}
	for range opts.Replicas {
		r, err := startReplica(ctx, opts.KeypoolBinary, cfgPath, env, opts.Log)
		if err != nil {
			return nil, err
		}
		s.Replicas = append(s.Replicas, r)
	}

	bs, err := envoy.LoadBootstrap(filepath.Join(opts.RepoRoot, "envoy", "compose", "envoy.yaml"))
	if opts.Configure != nil {
		bs, err = envoy.Generate(cfg)
	}
	if err != nil {
		return nil, err
	}
	endpoints := map[string][]string{}
	for _, r := range s.Replicas {
		endpoints[envoy.KeypoolCluster] = append(endpoints[envoy.KeypoolCluster], r.GRPCAddr)
	}
	mockAddr := strings.TrimPrefix(s.mock.URL, "http://")
	for pool := range s.Keys {
		endpoints[pool] = []string{mockAddr} // provider clusters are named after their pool
	}
	var proxyLog io.Writer = s.proxyLogs
	if opts.Log != nil {
		proxyLog = io.MultiWriter(s.proxyLogs, opts.Log)
	}
	s.Proxy, err = standin.New(bs, standin.Options{ListenAddr: "127.0.0.1:0", Endpoints: endpoints, Log: proxyLog})
	if err != nil {
		return nil, err
	}
	// The stand-in serves until its context ends: give it one that lives as long as
	// the stack, cut short only if ctx ends while it starts.
	proxyCtx, stopProxy := context.WithCancel(context.Background())
	s.stopProxy = stopProxy
	unwatch := context.AfterFunc(ctx, stopProxy)
	err = s.Proxy.Start(proxyCtx)
	unwatch()
	if err != nil {
		return nil, err
	}
	s.URL = "http://" + s.Proxy.Addr()
	return s, nil
}

// writeKeypoolConfig rewrites envoy/compose/keypool.yaml for this machine: loopback
// listeners on free ports, the given Redis (with a prefix of its own, so stacks can
// share one Redis) or in-memory state, and fake key values in the environment.
func (s *Stack) writeKeypoolConfig(opts Options) (string, []string, *config.Config, error) {
	src, err := os.ReadFile(filepath.Join(opts.RepoRoot, "envoy", "compose", "keypool.yaml"))
	if err != nil {
		return "", nil, nil, err
	}
	var tree map[string]any
	if err := yaml.Unmarshal(src, &tree); err != nil {
		return "", nil, nil, fmt.Errorf("envoy/compose/keypool.yaml: %w", err)
	}
	tree["listen"] = map[string]any{"grpc": "127.0.0.1:0", "admin": "127.0.0.1:0"}
	format := opts.LogFormat
	if format == "" {
		format = "json"
	}
	tree["log"] = map[string]any{"level": "info", "format": format}
	if opts.RedisURL != "" {
		// The longest timeout the configuration allows: the tests run the race-detector
		// build of the binary on a small shared machine, where 50ms is sometimes short.
		tree["state"] = map[string]any{"redis": map[string]any{
			"url": opts.RedisURL, "prefix": "e2e-" + randomHex(4) + ":", "timeout": "150ms",
		}}
	} else {
		delete(tree, "state")
	}
	if opts.Configure != nil {
		opts.Configure(tree)
	}
	out, err := yaml.Marshal(tree)
	if err != nil {
		return "", nil, nil, err
	}
	path := filepath.Join(s.tempDir, "keypool.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return "", nil, nil, err
	}

	// Every secret the configuration names gets a fake value, made up on first use.
	values := map[string]string{}
	fakeEnv := func(name string) (string, bool) {
		if _, ok := values[name]; !ok {
			values[name] = "fake-" + strings.ToLower(strings.ReplaceAll(name, "_", "-")) + "-" + randomHex(8)
		}
		return values[name], true
	}
	cfg, err := config.Read(bytes.NewReader(out), fakeEnv)
	if err != nil {
		return "", nil, nil, fmt.Errorf("rewritten compose config: %w", err)
	}
	for _, p := range cfg.Pools {
		for _, k := range p.ResolvedKeys() {
			s.Keys[p.Name] = append(s.Keys[p.Name], Key{Pool: p.Name, ID: k.ID(), Value: k.Value()})
		}
	}
	s.AdminToken = cfg.AdminToken()
	env := make([]string, 0, len(values))
	for name, v := range values {
		env = append(env, name+"="+v)
	}
	return path, env, cfg, nil
}

// Logs is everything the replicas and the stand-in wrote.
func (s *Stack) Logs() string {
	var b strings.Builder
	for i, r := range s.Replicas {
		fmt.Fprintf(&b, "== envoy-keypool replica %d\n%s", i+1, r.Logs())
	}
	fmt.Fprintf(&b, "== envoy stand-in\n%s", s.proxyLogs.String())
	return b.String()
}

// KeyValues lists every key value the stack configured, for secret scans.
func (s *Stack) KeyValues() []string {
	var out []string
	for _, keys := range s.Keys {
		for _, k := range keys {
			out = append(out, k.Value)
		}
	}
	return out
}

// Close stops everything: replicas get SIGTERM and a few seconds to drain.
func (s *Stack) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.Proxy != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = s.Proxy.Shutdown(ctx)
			cancel()
			s.stopProxy()
		}
		err = errors.Join(err, stopAll(s.Replicas, 10*time.Second))
		if s.mock != nil {
			s.mock.Close()
		}
		_ = os.RemoveAll(s.tempDir)
	})
	return err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
