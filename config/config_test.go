package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// env is an Environ backed by a map.
func env(vars map[string]string) config.Environ {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

func exampleEnv() config.Environ {
	return env(map[string]string{
		"OPENAI_API_KEY_1":          "test-openai-value-1-aaaaaaaa",
		"OPENAI_API_KEY_2":          "test-openai-value-2-bbbbbbbb",
		"ANTHROPIC_API_KEY_1":       "test-anthropic-value-1-cccc",
		"ANTHROPIC_API_KEY_2":       "test-anthropic-value-2-dddd",
		"ENVOY_KEYPOOL_ADMIN_TOKEN": "test-admin-token",
	})
}

func TestExampleLoads(t *testing.T) {
	f, err := os.Open("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := config.Read(f, exampleEnv())
	if err != nil {
		t.Fatalf("example.yaml: %v", err)
	}
	p, ok := c.Pool("anthropic")
	if !ok {
		t.Fatal("no anthropic pool")
	}
	keys := p.ResolvedKeys()
	if len(keys) != 2 || keys[0].ID() != "anthropic-primary" || keys[0].Value() != "test-anthropic-value-1-cccc" {
		t.Errorf("anthropic keys = %v", keys)
	}
	if got := p.Policy()[keypool.ReasonForbidden]; got.Default != 15*time.Second || got.Max != keypool.DefaultPolicy()[keypool.ReasonForbidden].Max {
		t.Errorf("forbidden rule = %+v, want default 15s and the default max", got)
	}
	if c.AdminToken() != "test-admin-token" || c.State.Redis != nil {
		t.Errorf("admin token %q, redis %v", c.AdminToken(), c.State.Redis)
	}
	o, _ := c.Pool("openai")
	if o.BYOK != config.BYOKDeny || !o.FailsOver(429) || o.FailsOver(529) || o.Route.Prefix != "/openai/" ||
		o.Route.Upstream != "https://api.openai.com" {
		t.Errorf("openai defaults: %+v", o)
	}
}

const validPool = `
pools:
  - name: p
    provider: openai
    keys:
      - id: k1
        secret: env:K1
`

func TestBadConfigNamesTheField(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // each must appear in the error
	}{
		{"empty file", ``, []string{"config is empty"}},
		{"no pools", `listen: {grpc: ":1"}`, []string{"pools: no pool configured"}},
		{"unknown top-level field", validPool + "bogus: 1\n", []string{"field bogus not found"}},
		{"unknown pool field", `
pools:
  - name: p
    provider: openai
    colour: blue
    keys: [{id: k1, secret: env:K1}]`, []string{"field colour not found"}},
		{"missing secret", `
pools:
  - name: p
    provider: openai
    keys: [{id: k1}]`, []string{"pools[0].keys[0].secret: missing"}},
		{"secret env not set", `
pools:
  - name: p
    provider: openai
    keys: [{id: k1, secret: env:NOT_SET_ANYWHERE}]`, []string{"pools[0].keys[0].secret: environment variable NOT_SET_ANYWHERE is not set"}},
		{"literal secret refused", `
pools:
  - name: p
    provider: openai
    keys: [{id: k1, secret: literal-value-in-file}]`, []string{"pools[0].keys[0].secret: must be \"env:NAME\" or \"file:PATH\""}},
		{"duplicate key id", `
pools:
  - name: p
    provider: openai
    keys: [{id: k1, secret: env:K1}, {id: k1, secret: env:K1}]`, []string{`pools[0].keys[1].id: duplicate key id "k1"`}},
		{"unknown provider", `
pools:
  - name: p
    provider: openia
    keys: [{id: k1, secret: env:K1}]`, []string{`pools[0].provider: unknown provider "openia"`}},
		{"min > max", `
pools:
  - name: p
    provider: openai
    cooldowns: {rate_limited: {min: 1h, max: 1m}}
    keys: [{id: k1, secret: env:K1}]`, []string{"pools[0].cooldowns.rate_limited: min 1h0m0s is greater than max 1m0s"}},
		{"unknown cooldown reason", `
pools:
  - name: p
    provider: openai
    cooldowns: {sleepy: {min: 1s}}
    keys: [{id: k1, secret: env:K1}]`, []string{`pools[0].cooldowns.sleepy: unknown reason "sleepy"`}},
		{"bad duration", `
pools:
  - name: p
    provider: openai
    cooldowns: {rate_limited: {default: soon}}
    keys: [{id: k1, secret: env:K1}]`, []string{`invalid duration "soon"`}},
		{"empty pool", `
pools:
  - name: p
    provider: openai
    keys: []`, []string{"pools[0].keys: pool has no keys"}},
		{"5xx is not a key failure", `
pools:
  - name: p
    provider: anthropic
    failure_statuses: [429, 529]
    keys: [{id: k1, secret: env:K1}]`, []string{"pools[0].failure_statuses: removed", "failure_policy"}},
		{"bad byok", `
pools:
  - name: p
    provider: openai
    byok: sometimes
    keys: [{id: k1, secret: env:K1}]`, []string{`pools[0].byok: "sometimes" is not one of deny, allow`}},
		{"duplicate pool", validPool + `  - name: p
    provider: openai
    keys: [{id: k1, secret: env:K1}]`, []string{`pools[1].name: duplicate pool name "p"`}},
		{"redis timeout above message_timeout", validPool + `
state:
  redis: {url: "redis://localhost:6379", timeout: 250ms}`, []string{"state.redis.timeout: 250ms is outside"}},
		{"redis without address", validPool + `
state:
  redis: {prefix: "x:"}`, []string{"state.redis: give url or addrs"}},
		{"redis bad url", validPool + `
state:
  redis: {url: "http://localhost"}`, []string{"state.redis.url: must be a redis://"}},
		{"sentinel and cluster at once", validPool + `
state:
  redis: {addrs: ["a:1", "b:2"], master_name: m, cluster: true}`, []string{"state.redis.cluster: master_name (Sentinel) and cluster exclude each other"}},
		{"database on a cluster", validPool + `
state:
  redis: {addrs: ["a:1", "b:2"], db: 3}`, []string{"state.redis.db: Redis Cluster has only database 0"}},
		{"hash tag in the prefix", validPool + `
state:
  redis: {url: "redis://a:1", prefix: "x{y}:"}`, []string{"state.redis.prefix"}},
		{"literal redis password", validPool + `
state:
  redis: {url: "redis://a:1", sentinel_password: hunter2}`, []string{"state.redis.sentinel_password: must be"}},
		{"marker header in x-envoy namespace", validPool + `
envoy: {retry_marker_header: x-envoy-retry-me}`, []string{"envoy.retry_marker_header: x-envoy-*"}},
		{"all problems at once", `
log: {level: loud}
pools:
  - name: "bad name"
    provider: nope
    keys: [{id: k1}]`, []string{"log.level", "pools[0].name", "pools[0].provider", "pools[0].keys[0].secret"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Read(strings.NewReader(tt.yaml), env(map[string]string{"K1": "test-k1-value"}))
			if err == nil {
				t.Fatal("Read accepted a bad config")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestSecretFromFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.WriteFile(path, []byte("  test-file-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := "pools:\n  - name: p\n    provider: openai\n    keys: [{id: k1, secret: \"file:" + path + "\"}]\n"
	c, err := config.Read(strings.NewReader(yaml), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Pools[0].ResolvedKeys()[0].Value(); got != "test-file-secret-value" {
		t.Errorf("value = %q", got)
	}
	for _, bad := range []string{empty, filepath.Join(dir, "missing")} {
		yaml := "pools:\n  - name: p\n    provider: openai\n    keys: [{id: k1, secret: \"file:" + bad + "\"}]\n"
		if _, err := config.Read(strings.NewReader(yaml), env(nil)); err == nil || !strings.Contains(err.Error(), "pools[0].keys[0].secret") {
			t.Errorf("file %s: err = %v", bad, err)
		}
	}
}

func TestErrorsNeverShowSecrets(t *testing.T) {
	const secret = "test-secret-that-must-not-show"
	yaml := `
log: {level: loud}
admin: {token: env:TOKEN}
state:
  redis: {url: "redis://x:6379", password: env:TOKEN, timeout: 1s}
pools:
  - name: p
    provider: openai
    keys: [{id: k1, secret: env:K1}, {id: k1, secret: env:K1}]
`
	_, err := config.Read(strings.NewReader(yaml), env(map[string]string{"K1": secret, "TOKEN": secret}))
	if err == nil {
		t.Fatal("accepted")
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error shows a secret: %v", err)
	}
}

func TestRedisPasswordResolved(t *testing.T) {
	yaml := validPool + `
state:
  redis:
    addrs: ["127.0.0.1:6379"]
    password: env:RP
`
	c, err := config.Read(strings.NewReader(yaml+"    sentinel_password: env:SP\n    master_name: mymaster\n"),
		env(map[string]string{"K1": "v", "RP": "test-redis-pass", "SP": "test-sentinel-pass"}))
	if err != nil {
		t.Fatal(err)
	}
	r := c.State.Redis
	if r.ResolvedPassword() != "test-redis-pass" || r.ResolvedSentinelPassword() != "test-sentinel-pass" ||
		r.Prefix != "envoy-keypool:" || r.Timeout.Std() != 50*time.Millisecond ||
		r.DialTimeout.Std() != time.Second || r.HealthCheckInterval.Std() != time.Second {
		t.Errorf("redis = %+v", r)
	}
}

// FuzzRead feeds arbitrary documents to the parser: it never panics, and what it
// accepts is a configuration the server can start from.
func FuzzRead(f *testing.F) {
	example, err := os.ReadFile("example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(example))
	f.Add(validPool)
	f.Add(validPool + "state:\n  redis: {url: \"redis://a:1\", timeout: 10ms}\n")
	f.Add("pools: [{name: p, provider: anthropic, byok: allow, keys: [{id: a, secret: env:K1}], cooldowns: {forbidden: {default: 1s}}}]")
	f.Add("{{{")
	f.Add("pools: 3")
	f.Fuzz(func(t *testing.T, doc string) {
		c, err := config.Read(strings.NewReader(doc), env(map[string]string{"K1": "test-fuzz-key-value"}))
		if err != nil {
			if strings.Contains(err.Error(), "test-fuzz-key-value") {
				t.Fatalf("error shows a secret: %v", err)
			}
			return
		}
		if len(c.Pools) == 0 {
			t.Fatal("accepted a configuration without pools")
		}
		for _, p := range c.Pools {
			if len(p.ResolvedKeys()) != len(p.Keys) || len(p.Keys) == 0 {
				t.Fatalf("pool %q accepted with %d keys, %d resolved", p.Name, len(p.Keys), len(p.ResolvedKeys()))
			}
			for r, rule := range p.Policy() {
				if err := rule.Validate(); err != nil {
					t.Fatalf("pool %q accepted with an invalid %s rule: %v", p.Name, r, err)
				}
			}
		}
	})
}

func TestPoolPolicyFieldsNameTheField(t *testing.T) {
	pool := func(extra string) string {
		return "pools:\n  - name: p\n    provider: openai\n" + extra
	}
	keys := "    keys: [{id: k1, secret: env:K1}, {id: k2, secret: env:K1}]\n"
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown class", pool("    failure_policy: {teapot: cool}\n" + keys), []string{`pools[0].failure_policy.teapot: unknown failure class "teapot"`}},
		{"unknown action", pool("    failure_policy: {forbidden: ignore}\n" + keys), []string{`pools[0].failure_policy.forbidden: unknown action "ignore"`}},
		{"quorum below 1", pool("    corroborate: {requests: -1}\n" + keys), []string{"pools[0].corroborate.requests: -1 is less than 1"}},
		{"negative window", pool("    corroborate: {window: -1s}\n" + keys), []string{"pools[0].corroborate.window: -1s is not positive"}},
		{"probe lease too long", pool("    probe_lease: 1h\n" + keys), []string{"pools[0].probe_lease: 1h0m0s is outside (0, 10m0s]"}},
		{"negative token floor", pool("    headroom: {min_tokens: -5}\n" + keys), []string{"pools[0].headroom.min_tokens: -5 is negative"}},
		{"unknown strategy", pool("    strategy: random\n" + keys), []string{`pools[0].strategy: unknown strategy "random"`}},
		{"weight with priority", pool("    keys: [{id: k1, secret: env:K1, weight: 2}]\n"), []string{"pools[0].keys[0].weight: applies only with strategy weighted or tiered"}},
		{"tier with weighted", pool("    strategy: weighted\n    keys: [{id: k1, secret: env:K1, tier: 1}]\n"), []string{"pools[0].keys[0].tier: applies only with strategy tiered"}},
		{"weight out of range", pool("    strategy: weighted\n    keys: [{id: k1, secret: env:K1, weight: -2}]\n"), []string{"pools[0].keys[0].weight: -2 is outside [1, 1000000]"}},
		{"negative tier", pool("    strategy: tiered\n    keys: [{id: k1, secret: env:K1, tier: -1}]\n"), []string{"pools[0].keys[0].tier: -1 is negative"}},
		{"credential header as model header", pool("    model_header: authorization\n" + keys), []string{`pools[0].model_header: "authorization" carries credentials`}},
		{"model header not lower case", pool("    model_header: X-Model\n" + keys), []string{"pools[0].model_header:", "not a lower-case header name"}},
		{"failure_statuses removed", pool("    failure_statuses: [401, 429]\n" + keys), []string{"pools[0].failure_statuses: removed", "failure_policy: {forbidden: pass}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Read(strings.NewReader(tt.yaml), env(map[string]string{"K1": "v"}))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestPoolPolicyReachesThePool(t *testing.T) {
	c, err := config.Read(strings.NewReader(`
pools:
  - name: p
    provider: openai
    strategy: tiered
    failure_policy: {forbidden: cool, request_too_large: pass}
    corroborate: {requests: 5, window: 30s}
    headroom: {min_tokens: 0}
    probe_lease: 45s
    model_header: x-ai-eg-model
    cooldowns: {quota: {default: 3h}}
    keys:
      - {id: a, secret: env:K1, weight: 3, tier: 1}
      - {id: b, secret: env:K1}
`), env(map[string]string{"K1": "v"}))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := c.Pool("p")
	o := p.PoolOptions(nil)
	if o.Strategy != keypool.StrategyTiered || len(o.Weights) != 2 || o.Weights[0] != 3 || o.Weights[1] != 1 ||
		o.Tiers[0] != 1 || o.Tiers[1] != 0 {
		t.Errorf("selection: %v %v %v", o.Strategy, o.Weights, o.Tiers)
	}
	f := o.Failures
	if f.Actions[keypool.ClassForbidden] != keypool.ActionCool || f.Actions[keypool.ClassRequestTooLarge] != keypool.ActionPass ||
		f.Quorum != 5 || f.Window != 30*time.Second {
		t.Errorf("failures: %+v", f)
	}
	if o.Headroom.MinTokens != 0 || o.ProbeLease != 45*time.Second || o.Policy[keypool.ReasonQuota].Default != 3*time.Hour ||
		p.ModelHeader != "x-ai-eg-model" {
		t.Errorf("headroom %+v lease %s quota %+v model header %q", o.Headroom, o.ProbeLease, o.Policy[keypool.ReasonQuota], p.ModelHeader)
	}
	if _, err := keypool.NewPool(o); err != nil {
		t.Errorf("NewPool: %v", err)
	}

	d, err := config.Read(strings.NewReader(validPool), env(map[string]string{"K1": "v"}))
	if err != nil {
		t.Fatal(err)
	}
	dp, _ := d.Pool("p")
	do := dp.PoolOptions(nil)
	if do.Strategy != keypool.StrategyPriority || do.Weights != nil || do.Failures.Quorum != 3 ||
		do.Failures.Window != 10*time.Second || do.Headroom.MinTokens != 1 || do.ProbeLease != 30*time.Second ||
		dp.ModelHeader != "x-keypool-model" {
		t.Errorf("defaults: %+v, model header %q", do, dp.ModelHeader)
	}
}
