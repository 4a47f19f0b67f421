package redisstate

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"cdr.dev/slog/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Key values are obviously fake; every test ends by checking that none of them
// reached Redis.
var testValues = []string{
	"test-key-value-aaaaaaaaaaaaaaaa",
	"test-key-value-bbbbbbbbbbbbbbbb",
	"test-key-value-cccccccccccccccc",
	"test-key-value-dddddddddddddddd",
	"test-key-value-eeeeeeeeeeeeeeee",
	"test-key-value-ffffffffffffffff",
}

// testKeys returns n keys of pool, key-1 first.
func testKeys(pool string, n int) []keypool.Key {
	keys := make([]keypool.Key, n)
	for i := range keys {
		keys[i] = keypool.NewKey(pool, fmt.Sprintf("key-%d", i+1), testValues[i%len(testValues)])
	}
	return keys
}

// topology is a way of reaching Redis that users configure.
type topology struct {
	name    string
	server  []testredis.Option
	options func(srv *testredis.Server) Options
}

func topologies() []topology {
	return []topology{
		{"single", nil, func(srv *testredis.Server) Options { return Options{URL: srv.URL()} }},
		{"cluster", []testredis.Option{testredis.WithCluster()}, func(srv *testredis.Server) Options {
			return Options{Addrs: []string{srv.Addr()}, Cluster: true}
		}},
	}
}

// startRedis starts a server whose content is checked for key values when the
// test ends.
func startRedis(t testing.TB, opts ...testredis.Option) *testredis.Server {
	t.Helper()
	srv := testredis.Start(t, opts...)
	t.Cleanup(func() { srv.AssertNoSecrets(t, testValues...) })
	return srv
}

// replica is one envoy-keypool replica's State, with what a test observes of it.
type replica struct {
	*State
	counter *testredis.Counter
	logs    *logSink
	reg     *prometheus.Registry
}

// newReplica starts a State from opts, filling in a logger, a registry and a
// command counter, and closes it when the test ends.
func newReplica(t testing.TB, opts Options) *replica {
	t.Helper()
	// The counter measures what requests cost, not the State's upkeep.
	r := &replica{counter: &testredis.Counter{Ignore: IsBackground}, logs: &logSink{}, reg: prometheus.NewRegistry()}
	started := time.Now().Format("15:04:05.000")
	opts.Logger = slog.Make(r.logs).Leveled(slog.LevelDebug)
	opts.Registerer = r.reg
	if opts.testHooks == nil {
		opts.testHooks = &testHooks{}
	}
	opts.testHooks.redisHooks = append(opts.testHooks.redisHooks, r.counter)
	if opts.Timeout == 0 {
		// A test that does not measure timeouts gives Redis as long as a loaded
		// CI machine under -race may need (see testHooks.timeout).
		opts.testHooks.timeout = time.Second
	}
	if opts.Pools == nil {
		opts.Pools = []string{"openai"}
	}
	if opts.HealthCheckInterval == 0 {
		opts.HealthCheckInterval = 200 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() {
			r.logs.dump(t, "replica started "+started)
		}
	})
	r.State = s
	return r
}

// newHealthyReplica is newReplica that also waits for the first synchronisation.
func newHealthyReplica(t testing.TB, opts Options) *replica {
	t.Helper()
	r := newReplica(t, opts)
	waitFor(t, "replica synchronised with redis", func() bool { return r.Healthy() })
	return r
}

// gauge reads the value of an unlabelled gauge from the replica's registry.
func (r *replica) gauge(t *testing.T, name string) float64 {
	t.Helper()
	return r.metric(t, name).GetGauge().GetValue()
}

// counterMetric reads the value of an unlabelled counter from the replica's
// registry.
func (r *replica) counterMetric(t *testing.T, name string) float64 {
	t.Helper()
	return r.metric(t, name).GetCounter().GetValue()
}

// metric is the first series of the metric family name in the replica's
// registry.
func (r *replica) metric(t *testing.T, name string) *dto.Metric {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0]
		}
	}
	t.Fatalf("metric %s not registered", name)
	return nil
}

// waitFor waits until cond holds, failing the test with what after a generous
// deadline. It polls: the conditions are about other goroutines and processes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		<-tick.C
	}
}

// logSink records log entries.
type logSink struct {
	mu      sync.Mutex
	entries []slog.SinkEntry
}

func (l *logSink) LogEntry(_ context.Context, e slog.SinkEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, e)
}

func (l *logSink) Sync() {}

// dump writes the entries to the test's log: what a replica went through,
// for a test that failed.
func (l *logSink) dump(t testing.TB, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries {
		t.Logf("%s: %s %s %s %v", name, e.Time.Format("15:04:05.000"), e.Level, e.Message, e.Fields)
	}
}

// count is how many entries' message contains substr.
func (l *logSink) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.entries {
		if strings.Contains(e.Message, substr) {
			n++
		}
	}
	return n
}

func newFakeClock() *fakeclock.Clock { return fakeclock.New(time.Now().Truncate(time.Millisecond)) }

// newPool builds a pool on state.
func newPool(t testing.TB, name string, keys []keypool.Key, state keypool.State, clock keypool.Clock) *keypool.Pool {
	t.Helper()
	p, err := keypool.NewPool(keypool.PoolOptions{Name: name, Keys: keys, State: state, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// sameCooldown compares cooldowns to the millisecond Redis stores.
func sameCooldown(a, b keypool.Cooldown) bool {
	return a.Reason == b.Reason && unixMillisCeil(a.Until) == unixMillisCeil(b.Until)
}

// The tests below the State's API speak of a key's key-wide cooldown; these
// helpers say it with State v2.

// cooldownOf is the key-wide cooldown in s's local view.
func cooldownOf(s keypool.State, pool, ref string) keypool.Cooldown {
	if v := s.View(pool); v != nil {
		return v.Entries[keypool.Scope{Ref: ref}].Cooldown
	}
	return keypool.Cooldown{}
}

// markFailed marks the key-wide scope, recording requestID's try, and returns
// the cooldown in force.
func markFailed(ctx context.Context, s keypool.State, pool, ref, requestID string, c keypool.Cooldown) keypool.Cooldown {
	span := time.Until(c.Until)
	return s.Mark(ctx, pool, keypool.Mark{Scope: keypool.Scope{Ref: ref}, Cooldown: c, Span: span, RequestID: requestID}).Entry.Cooldown
}

// requestRead is what a retry sees: the local view's cooldowns of refs and the
// request's tried set.
type requestRead struct {
	Cooldowns map[string]keypool.Cooldown
	Tried     []string
}

func readRequest(ctx context.Context, s keypool.State, pool string, refs []string, requestID string) requestRead {
	r := requestRead{Cooldowns: map[string]keypool.Cooldown{}, Tried: s.Tried(ctx, pool, requestID)}
	for _, ref := range refs {
		if c := cooldownOf(s, pool, ref); c != (keypool.Cooldown{}) {
			r.Cooldowns[ref] = c
		}
	}
	return r
}

func (r *replica) Cooldown(pool, ref string) keypool.Cooldown { return cooldownOf(r.State, pool, ref) }

func (r *replica) MarkFailed(ctx context.Context, pool, ref, requestID string, c keypool.Cooldown) keypool.Cooldown {
	return markFailed(ctx, r.State, pool, ref, requestID, c)
}

func (r *replica) RequestView(ctx context.Context, pool string, refs []string, requestID string) requestRead {
	return readRequest(ctx, r.State, pool, refs, requestID)
}

// storedCooldown is the key-wide cooldown Redis holds for ref.
func storedCooldown(ctx context.Context, c redis.Cmdable, prefix, pool, ref string) (keypool.Cooldown, bool) {
	raw, err := c.HGetAll(ctx, layout{prefix}.key(pool, ref)).Result()
	if err != nil || len(raw) == 0 {
		return keypool.Cooldown{}, false
	}
	msg := pool + " " + ref + " " + raw["v"] + " " + orZero(raw["o"])
	for f, val := range raw {
		if model, ok := strings.CutPrefix(f, "s:"); ok {
			if model == "" {
				model = keyWideModel
			}
			msg += "\n" + model + " " + val
		}
	}
	_, _, ks, ok := parseKeyState(msg)
	if !ok {
		return keypool.Cooldown{}, false
	}
	return ks.scopes[""].e.Cooldown, true
}

func orZero(s string) string {
	if s == "" {
		return "0"
	}
	return s
}
