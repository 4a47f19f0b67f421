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

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"go.yaml.in/yaml/v3"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
	"github.com/envoy-keypool/envoy-keypool/internal/freeport"
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
	// RedisAddrs, instead of RedisURL, are the nodes of the shared state:
	// state.redis.addrs, with RedisCluster for a Redis Cluster's seed nodes.
	// Default: none.
	RedisAddrs   []string
	RedisCluster bool
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
	// UnixSockets serves each replica's ext_proc on a Unix domain socket, and runs
	// the Envoy configuration generated for those sockets (pipe addresses), which the
	// stand-in dials as Envoy dials a pipe. Default false: loopback TCP.
	UnixSockets bool
	// SecretFiles gives the keys to the replicas as files of a Kubernetes-style
	// Secret mount (file: secrets) instead of environment variables, so tests can
	// rotate them (Stack.SetKey) and watch the replicas reload. Default false.
	SecretFiles bool
	// DrainDelay is the replicas' shutdown.drain_delay for Replica.Stop and
	// Stack.Restart. Stack.Close skips it. Default 0.
	DrainDelay time.Duration
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
	// Replicas are the envoy-keypool processes. Restart replaces an entry.
	Replicas []*Replica
	// Proxy is the Envoy stand-in.
	Proxy *standin.Proxy
	// Keys lists each pool's keys in priority order (EditConfig and SetKey change
	// them: read them between changes, not during).
	Keys map[string][]Key
	// AdminToken is the token of the replicas' key API.
	AdminToken string

	opts      Options
	mock      *httptest.Server
	stopProxy context.CancelFunc
	proxyLogs *syncbuf.Buffer
	tempDir   string
	closeOnce sync.Once

	mu        sync.Mutex        // protects tree, envValues, secrets, Keys, pastValues, retired and Replicas' entries
	tree      map[string]any    // the envoy-keypool configuration, listeners aside
	envValues map[string]string // the env: secrets, given to the replicas' environment
	secrets   *secretMount      // nil unless Options.SecretFiles
	// pastValues are key values no longer configured, still searched for in logs.
	pastValues []string
	// listen are each replica's fixed listeners, kept across restarts.
	listen []listeners
	// retired are replicas replaced by a restart, whose logs are still searched.
	retired []*Replica
}

type listeners struct{ grpc, admin string }

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
	s := &Stack{opts: opts, tempDir: tempDir, proxyLogs: &syncbuf.Buffer{}, Keys: map[string][]Key{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	mock := mockprovider.New()
	s.mock = httptest.NewServer(mock)
	s.Mock = &mockprovider.Client{BaseURL: s.mock.URL}

	perReplica := 2
	if opts.UnixSockets {
		perReplica = 1
	}
	// The replicas need fixed addresses: the stand-in's endpoints are set once, and
	// a restarted replica must come back where it was.
	addrs, err := freeport.Addrs(opts.Replicas * perReplica)
	if err != nil {
		return nil, err
	}
	for i := range opts.Replicas {
		l := listeners{admin: addrs[0]}
		if opts.UnixSockets {
			l.grpc = config.UnixPrefix + filepath.Join(tempDir, fmt.Sprintf("replica-%d.sock", i+1))
		} else {
			l.grpc = addrs[1]
		}
		addrs = addrs[perReplica:]
		s.listen = append(s.listen, l)
	}
	cfg, err := s.prepareConfig()
	if err != nil {
		return nil, err
	}
	for i := range opts.Replicas {
		r, err := s.startReplica(ctx, i)
		if err != nil {
			return nil, err
		}
		s.Replicas = append(s.Replicas, r)
	}

	bs, endpoints, err := s.envoyConfig(cfg)
	if err != nil {
		return nil, err
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

// envoyConfig is the Envoy bootstrap the stand-in runs, and the endpoints it
// overrides: the shipped compose bootstrap with the replicas' and the mock's local
// addresses, or, when the stack changes the configuration or serves over sockets,
// the bootstrap generated for it.
func (s *Stack) envoyConfig(cfg *config.Config) (*bootstrapv3.Bootstrap, map[string][]string, error) {
	endpoints := map[string][]string{}
	mockAddr := strings.TrimPrefix(s.mock.URL, "http://")
	for pool := range s.Keys {
		endpoints[pool] = []string{mockAddr} // provider clusters are named after their pool
	}
	if s.opts.UnixSockets {
		// Envoy reaches the replicas through the pipe addresses generated from
		// envoy.keypool_addresses; nothing is overridden.
		cfg.Envoy.KeypoolAddresses = nil
		for _, l := range s.listen {
			cfg.Envoy.KeypoolAddresses = append(cfg.Envoy.KeypoolAddresses, l.grpc)
		}
		// The generator checks the replicas' listener against the addresses.
		cfg.Listen.GRPC = s.listen[0].grpc
		bs, err := envoy.Generate(cfg)
		return bs, endpoints, err
	}
	for _, l := range s.listen {
		endpoints[envoy.KeypoolCluster] = append(endpoints[envoy.KeypoolCluster], l.grpc)
	}
	if s.opts.Configure != nil {
		bs, err := envoy.Generate(cfg)
		return bs, endpoints, err
	}
	bs, err := envoy.LoadBootstrap(filepath.Join(s.opts.RepoRoot, "envoy", "compose", "envoy.yaml"))
	return bs, endpoints, err
}

// prepareConfig reads envoy/compose/keypool.yaml and adapts it to this machine: the
// given Redis (with a prefix of its own, so stacks can share one Redis) or in-memory
// state, fake key values (in the environment, or as files), then writes each
// replica's file. It returns the configuration as the replicas read it.
func (s *Stack) prepareConfig() (*config.Config, error) {
	opts := s.opts
	src, err := os.ReadFile(filepath.Join(opts.RepoRoot, "envoy", "compose", "keypool.yaml"))
	if err != nil {
		return nil, err
	}
	var tree map[string]any
	if err := yaml.Unmarshal(src, &tree); err != nil {
		return nil, fmt.Errorf("envoy/compose/keypool.yaml: %w", err)
	}
	format := opts.LogFormat
	if format == "" {
		format = "json"
	}
	tree["log"] = map[string]any{"level": "info", "format": format}
	if opts.RedisURL != "" || len(opts.RedisAddrs) > 0 {
		// Twice the default: the tests run the race-detector build of the binary on a
		// small shared machine, where 50ms is sometimes short. Not the 150ms the
		// configuration allows: when Redis dies, a message waits one timed-out call, and
		// the race build needs more than the 50ms that would leave of the stand-in's
		// 200ms message_timeout.
		redis := map[string]any{"prefix": "e2e-" + randomHex(4) + ":", "timeout": "100ms"}
		if opts.RedisURL != "" {
			redis["url"] = opts.RedisURL
		} else {
			redis["addrs"], redis["cluster"] = opts.RedisAddrs, opts.RedisCluster
		}
		tree["state"] = map[string]any{"redis": redis}
	} else {
		delete(tree, "state")
	}
	if opts.Configure != nil {
		opts.Configure(tree)
	}
	if opts.SecretFiles {
		s.secrets, err = newSecretMount(filepath.Join(s.tempDir, "secrets"))
		if err != nil {
			return nil, err
		}
	}

	// Every secret the configuration names gets a fake value, made up on first use.
	values := map[string]string{}
	fakeEnv := func(name string) (string, bool) {
		if _, ok := values[name]; !ok {
			values[name] = "fake-" + strings.ToLower(strings.ReplaceAll(name, "_", "-")) + "-" + randomHex(8)
		}
		return values[name], true
	}
	body, err := yaml.Marshal(tree)
	if err != nil {
		return nil, err
	}
	cfg, err := config.Read(bytes.NewReader(body), fakeEnv)
	if err != nil {
		return nil, fmt.Errorf("rewritten compose config: %w", err)
	}
	if s.secrets != nil {
		// Each key's secret becomes a file named after its variable; the values stay.
		files := map[string]string{}
		for _, p := range cfg.Pools {
			for _, k := range p.Keys {
				name, ok := strings.CutPrefix(string(k.Secret), "env:")
				if !ok {
					continue
				}
				files[name] = values[name]
				delete(values, name)
			}
		}
		if err := s.secrets.update(files); err != nil {
			return nil, err
		}
		setKeySecrets(tree, func(ref string) string {
			if name, ok := strings.CutPrefix(ref, "env:"); ok {
				if _, isFile := files[name]; isFile {
					return "file:" + s.secrets.path(name)
				}
			}
			return ref
		})
	}
	for _, p := range cfg.Pools {
		for _, k := range p.ResolvedKeys() {
			s.Keys[p.Name] = append(s.Keys[p.Name], Key{Pool: p.Name, ID: k.ID(), Value: k.Value()})
		}
	}
	s.AdminToken = cfg.AdminToken()
	s.envValues = values
	s.tree = tree
	if err := s.writeConfigs(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// setKeySecrets rewrites every pool key's secret reference in tree with f.
func setKeySecrets(tree map[string]any, f func(ref string) string) {
	pools, _ := tree["pools"].([]any)
	for _, p := range pools {
		pm, _ := p.(map[string]any)
		keys, _ := pm["keys"].([]any)
		for _, k := range keys {
			km, _ := k.(map[string]any)
			if ref, ok := km["secret"].(string); ok {
				km["secret"] = f(ref)
			}
		}
	}
}

// configPath is replica i's configuration file.
func (s *Stack) configPath(i int) string {
	return filepath.Join(s.tempDir, fmt.Sprintf("keypool-%d.yaml", i+1))
}

// writeConfigs writes each replica's file: the shared tree with its listeners. A
// file is replaced by a rename, as editors and configuration tools do, so a replica
// never reads half of it. The caller holds mu, or is Start.
func (s *Stack) writeConfigs() error {
	for i, l := range s.listen {
		tree := map[string]any{}
		for k, v := range s.tree {
			tree[k] = v
		}
		tree["listen"] = map[string]any{"grpc": l.grpc, "admin": l.admin}
		tree["shutdown"] = map[string]any{"drain_delay": s.opts.DrainDelay.String(), "timeout": "5s"}
		out, err := yaml.Marshal(tree)
		if err != nil {
			return err
		}
		tmp := s.configPath(i) + ".tmp"
		if err := os.WriteFile(tmp, out, 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, s.configPath(i)); err != nil {
			return err
		}
	}
	return nil
}

func (s *Stack) startReplica(ctx context.Context, i int) (*Replica, error) {
	s.mu.Lock()
	env := make([]string, 0, len(s.envValues))
	for name, v := range s.envValues {
		env = append(env, name+"="+v)
	}
	s.mu.Unlock()
	return startReplica(ctx, s.opts.KeypoolBinary, s.configPath(i), env, s.opts.Log)
}

// Restart stops replica i as a rolling update does (SIGTERM: the drain delay, then a
// graceful stop) and starts it again on the same addresses. It returns once the new
// process is ready; the stand-in's health checks put it back in rotation.
func (s *Stack) Restart(ctx context.Context, i int) error {
	s.mu.Lock()
	old := s.Replicas[i]
	s.mu.Unlock()
	if err := old.Stop(ctx); err != nil {
		return fmt.Errorf("stop replica %d: %w", i+1, err)
	}
	r, err := s.startReplica(ctx, i)
	if err != nil {
		return fmt.Errorf("start replica %d again: %w", i+1, err)
	}
	s.mu.Lock()
	s.retired = append(s.retired, old)
	s.Replicas[i] = r
	s.mu.Unlock()
	return nil
}

// Replica returns replica i (Restart replaces it).
func (s *Stack) Replica(i int) *Replica {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Replicas[i]
}

// EditConfig changes the configuration every replica reads (edit gets the YAML
// tree, listeners aside) and rewrites their files: each replica sees the change and
// reloads. Stack.Keys follows what the new file configures (a broken file, which the
// replicas refuse, leaves it as it was). A new key's file: secret must exist first
// (SetKey).
func (s *Stack) EditConfig(edit func(tree map[string]any)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	edit(s.tree)
	if err := s.writeConfigs(); err != nil {
		return err
	}
	s.refreshKeys()
	return nil
}

// SetKey writes value as the secret of key id of pool (a new key, or a rotation)
// into the Secret mount, with the kubelet's atomic ..data swap, and returns the
// reference that names it in the configuration. It needs Options.SecretFiles.
func (s *Stack) SetKey(pool, id, value string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.secrets == nil {
		return "", errors.New("stack: SetKey needs Options.SecretFiles")
	}
	name := secretName(pool, id)
	if ref, ok := keySecret(s.tree, pool, id); ok {
		if file, isFile := strings.CutPrefix(ref, "file:"); isFile {
			name = filepath.Base(file)
		}
	}
	files := s.secrets.current()
	files[name] = value
	if err := s.secrets.update(files); err != nil {
		return "", err
	}
	s.refreshKeys()
	return "file:" + s.secrets.path(name), nil
}

// keySecret is the secret reference of key id of pool in tree.
func keySecret(tree map[string]any, pool, id string) (string, bool) {
	pools, _ := tree["pools"].([]any)
	for _, p := range pools {
		pm, _ := p.(map[string]any)
		if pm["name"] != pool {
			continue
		}
		keys, _ := pm["keys"].([]any)
		for _, k := range keys {
			km, _ := k.(map[string]any)
			if km["id"] == id {
				ref, ok := km["secret"].(string)
				return ref, ok
			}
		}
	}
	return "", false
}

// refreshKeys reads the keys the configuration names now into Keys; values no
// longer configured are kept for the log scans. The caller holds mu.
func (s *Stack) refreshKeys() {
	body, err := yaml.Marshal(s.tree)
	if err != nil {
		return
	}
	cfg, err := config.Read(bytes.NewReader(body), func(name string) (string, bool) {
		v, ok := s.envValues[name]
		return v, ok
	})
	if err != nil {
		return // the replicas refuse it too, and keep their keys
	}
	now := map[string]bool{}
	keys := map[string][]Key{}
	for _, p := range cfg.Pools {
		for _, k := range p.ResolvedKeys() {
			keys[p.Name] = append(keys[p.Name], Key{Pool: p.Name, ID: k.ID(), Value: k.Value()})
			now[k.Value()] = true
		}
	}
	for _, ks := range s.Keys {
		for _, k := range ks {
			if !now[k.Value] {
				s.pastValues = append(s.pastValues, k.Value)
			}
		}
	}
	s.Keys = keys
}

func secretName(pool, id string) string {
	return strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(pool + "_" + id))
}

// Logs is everything the replicas (those a restart replaced included) and the
// stand-in wrote.
func (s *Stack) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for i, r := range s.retired {
		fmt.Fprintf(&b, "== envoy-keypool (replaced by a restart) %d\n%s", i+1, r.Logs())
	}
	for i, r := range s.Replicas {
		fmt.Fprintf(&b, "== envoy-keypool replica %d\n%s", i+1, r.Logs())
	}
	fmt.Fprintf(&b, "== envoy stand-in\n%s", s.proxyLogs.String())
	return b.String()
}

// KeyValues lists every key value the stack configured, those rotated away or
// removed included, for secret scans.
func (s *Stack) KeyValues() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]string(nil), s.pastValues...)
	for _, keys := range s.Keys {
		for _, k := range keys {
			out = append(out, k.Value)
		}
	}
	return out
}

// Close stops everything. The replicas are stopped at once (a second SIGTERM skips
// the drain delay), each given a few seconds for streams in flight.
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
