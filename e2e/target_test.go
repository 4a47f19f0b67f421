package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
	"github.com/envoy-keypool/envoy-keypool/internal/stack"
	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
)

// target is the chain under test, local or docker-compose.
type target struct {
	url        string
	mock       *mockprovider.Client
	keys       map[string][]stack.Key
	adminURLs  []string
	adminToken string

	local *stack.Stack      // nil for compose
	redis *testredis.Server // nil for compose
}

// startTarget brings up the chain for one test and tears it down after, checking
// that no key value leaked into Redis or any log.
func startTarget(t *testing.T) *target {
	t.Helper()
	return startTargetWith(t, nil)
}

// startTargetWith is startTarget with the local stack's options changed by edit
// (nil: as they are). Over docker-compose, edit does not apply.
func startTargetWith(t *testing.T, edit func(*stack.Options)) *target {
	t.Helper()
	if os.Getenv("KEYPOOL_E2E_TARGET") == "compose" {
		return composeTarget(t)
	}
	redis := testredis.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var logTo *testLogWriter
	if testing.Verbose() {
		logTo = &testLogWriter{t: t}
	}
	opts := stack.Options{RepoRoot: repoRoot, KeypoolBinary: keypoolBinary, RedisURL: redis.URL()}
	if logTo != nil {
		opts.Log = logTo
	}
	if os.Getenv(listenEnv) == "unix" {
		opts.UnixSockets = true
	}
	if edit != nil {
		edit(&opts)
	}
	tg := launchStack(t, ctx, opts, redis)
	tg.redis = redis
	return tg
}

// secretStore is a Redis deployment (one server, a Cluster, Sentinel's set) that a
// test searches for key values when it ends.
type secretStore interface {
	AssertNoSecrets(tb testing.TB, secrets ...string) int
}

// launchStack starts the local stack and tears it down when the test ends,
// checking that no key value leaked into any log or into store (nil: no Redis).
func launchStack(t *testing.T, ctx context.Context, opts stack.Options, store secretStore) *target {
	t.Helper()
	s, err := stack.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{url: s.URL, mock: s.Mock, keys: s.Keys, adminToken: s.AdminToken, local: s}
	for _, r := range s.Replicas {
		// A restarted replica comes back on the same addresses.
		tg.adminURLs = append(tg.adminURLs, "http://"+r.AdminAddr)
	}
	t.Cleanup(func() {
		// The SDKs share http.DefaultTransport, which may hold a connection it dialed
		// but never used: net/http's Shutdown waits 5s for such a "new" connection.
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		if err := s.Close(); err != nil {
			t.Errorf("stack shutdown: %v", err)
		}
		logs := s.Logs()
		for _, v := range s.KeyValues() {
			if strings.Contains(logs, v) {
				t.Errorf("a key value appears in the logs")
			}
		}
		if store != nil {
			store.AssertNoSecrets(t, s.KeyValues()...)
		}
		if t.Failed() && !testing.Verbose() {
			t.Logf("logs:\n%s", tail(logs, 120))
		}
	})
	return tg
}

// composeTarget is a `docker compose up` stack (docker-compose.yml): the stand-in's
// place is taken by the real Envoy on localhost:10000, the mock by its published
// port; keys come from the compose configuration.
func composeTarget(t *testing.T) *target {
	t.Helper()
	tg := &target{
		url:        envOr("KEYPOOL_E2E_ENVOY_URL", "http://localhost:10000"),
		mock:       &mockprovider.Client{BaseURL: envOr("KEYPOOL_E2E_MOCK_URL", "http://localhost:8080")},
		adminURLs:  strings.Split(envOr("KEYPOOL_E2E_ADMIN_URLS", "http://localhost:9002,http://localhost:9003"), ","),
		adminToken: envOr("ENVOY_KEYPOOL_ADMIN_TOKEN", "compose-admin-token"),
		keys:       composeKeys(),
	}
	ctx := context.Background()
	if err := tg.mock.Reset(ctx); err != nil {
		t.Fatalf("the compose stack's mock provider does not answer: %v", err)
	}
	for _, u := range tg.adminURLs {
		for _, p := range []string{"openai", "anthropic", "openai-byok", "azure", "gemini", "groq"} {
			for _, k := range tg.keys[p] {
				req, _ := http.NewRequest(http.MethodPost, u+"/v1/pools/"+p+"/keys/"+k.ID+"/enable", nil)
				req.Header.Set("Authorization", "Bearer "+tg.adminToken)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			}
		}
	}
	return tg
}

// composeKeys are the fake key values docker-compose.yml gives the replicas (the
// same environment variables override them, as they would the stack's).
func composeKeys() map[string][]stack.Key {
	keys := map[string][]stack.Key{}
	for _, p := range []struct {
		pool, env, value string
		n                int
	}{
		{"openai", "OPENAI_API_KEY_", "sk-compose-openai-", 5},
		{"anthropic", "ANTHROPIC_API_KEY_", "sk-ant-compose-", 3},
		{"openai-byok", "OPENAI_BYOK_KEY_", "sk-compose-openai-byok-", 1},
		{"azure", "AZURE_OPENAI_API_KEY_", "compose-azure-", 2},
		{"gemini", "GEMINI_API_KEY_", "compose-gemini-", 2},
		{"groq", "GROQ_API_KEY_", "gsk-compose-groq-", 2},
	} {
		for i := 1; i <= p.n; i++ {
			n := strconv.Itoa(i)
			keys[p.pool] = append(keys[p.pool], stack.Key{Pool: p.pool, ID: p.pool + "-" + n, Value: envOr(p.env+n, p.value+n)})
		}
	}
	return keys
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// killRedis stops the shared Redis; restartRedis brings it back empty.
func (tg *target) killRedis(t *testing.T) {
	t.Helper()
	if tg.redis != nil {
		tg.redis.Stop()
		return
	}
	compose(t, "kill", "redis")
}

func (tg *target) restartRedis(t *testing.T) {
	t.Helper()
	if tg.redis != nil {
		tg.redis.Restart()
		return
	}
	compose(t, "up", "-d", "--force-recreate", "redis")
}

// killReplica ends envoy-keypool replica i (0-based) as a crash would.
func (tg *target) killReplica(t *testing.T, i int) {
	t.Helper()
	if tg.local != nil {
		tg.local.Replicas[i].Kill()
		return
	}
	compose(t, "kill", []string{"envoy-keypool-1", "envoy-keypool-2"}[i])
}

func compose(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("docker", append([]string{"compose", "-f", repoRoot + "/docker-compose.yml"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker compose %v: %v\n%s", args, err, out)
	}
}

type testLogWriter struct{ t *testing.T }

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
