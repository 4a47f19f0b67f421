package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

var testSecrets = map[string]string{
	"TEST_OPENAI_KEY_1": "test-app-openai-key-one-111111",
	"TEST_OPENAI_KEY_2": "test-app-openai-key-two-222222",
	"TEST_ADMIN_TOKEN":  "test-app-admin-token-333333",
}

const serveConfig = `
listen: {grpc: "127.0.0.1:0", admin: "127.0.0.1:0"}
admin: {token: env:TEST_ADMIN_TOKEN}
log: {level: debug, format: json}
pools:
  - name: openai
    provider: openai
    keys:
      - {id: one, secret: env:TEST_OPENAI_KEY_1}
      - {id: two, secret: env:TEST_OPENAI_KEY_2}
`

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func setSecrets(t *testing.T) {
	for k, v := range testSecrets {
		t.Setenv(k, v)
	}
}

// lineWriter collects output and lets a test wait for a line that matches.
type lineWriter struct {
	mu      sync.Mutex // protects buf and waiters
	buf     bytes.Buffer
	changed chan struct{}
}

func newLineWriter() *lineWriter { return &lineWriter{changed: make(chan struct{}, 1)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	select {
	case w.changed <- struct{}{}:
	default:
	}
	return n, err
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor returns the first submatches of re in the output, waiting until ctx ends.
func (w *lineWriter) waitFor(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	for {
		if m := re.FindStringSubmatch(w.String()); m != nil {
			return m, nil
		}
		select {
		case <-w.changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %q: %w; output so far:\n%s", re, ctx.Err(), w.String())
		}
	}
}

var readyLine = regexp.MustCompile(`envoy-keypool ready grpc=(\S+) admin=(\S+)`)

type running struct {
	grpcAddr, adminAddr string
	configPath          string
	stdout, stderr      *lineWriter
	signals             chan os.Signal
	stop                func() int
}

// start serves cfg with extra serve flags (by default no drain delay: tests that
// need one say so).
func start(t *testing.T, cfg string, flags ...string) *running {
	t.Helper()
	setSecrets(t)
	return startFile(t, writeConfig(t, cfg), flags...)
}

// startFile serves the configuration file at path; the test's secrets must be set.
func startFile(t *testing.T, path string, flags ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := newLineWriter(), newLineWriter()
	done := make(chan int, 1)
	signals := make(chan os.Signal, 4)
	waitCtx, waitCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer waitCancel()
	go func() {
		args := append([]string{"serve", "--config", path, "--drain-delay", "0s"}, flags...)
		code := app.Run(ctx, args, stdout, stderr, signals)
		waitCancel() // no ready line will come
		done <- code
	}()
	m, err := stdout.waitFor(waitCtx, readyLine)
	if err != nil {
		cancel()
		t.Fatalf("%v\nstderr:\n%s", err, stderr.String())
	}
	var once sync.Once
	code := -1
	r := &running{grpcAddr: m[1], adminAddr: m[2], configPath: path, stdout: stdout, stderr: stderr, signals: signals,
		stop: func() int {
			once.Do(func() { cancel(); code = <-done })
			return code
		}}
	t.Cleanup(func() {
		r.stop()
		for name, v := range testSecrets {
			if name == "TEST_ADMIN_TOKEN" {
				continue
			}
			if strings.Contains(stdout.String(), v) || strings.Contains(stderr.String(), v) {
				t.Errorf("the process wrote the value of %s", name)
			}
		}
	})
	return r
}

func TestServeInjectsKeysAndShutsDownCleanly(t *testing.T) {
	r := start(t, serveConfig)
	conn, err := grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health = %v, %v; want SERVING", hc, err)
	}

	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(metadata.AppendToOutgoingContext(ctx, "x-keypool-pool", "openai"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: "x-request-id", RawValue: []byte("r1")}, {Key: "x-envoy-attempt-count", RawValue: []byte("1")},
		}}},
	}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	set := resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders()
	if len(set) != 1 || string(set[0].GetHeader().GetRawValue()) != "Bearer "+testSecrets["TEST_OPENAI_KEY_1"] {
		t.Fatalf("injected %v, want the first key", set)
	}

	// A stream in flight when SIGTERM arrives still finishes.
	stopped := make(chan int, 1)
	go func() { stopped <- r.stop() }()
	waitCtx, waitCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer waitCancel()
	if _, err := r.stderr.waitFor(waitCtx, regexp.MustCompile(`waiting for the streams in flight`)); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":status", RawValue: []byte("429")},
		}}},
	}}); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil {
		t.Fatalf("in-flight stream cut by shutdown: %v", err)
	}
	if m := resp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders(); len(m) != 1 || m[0].GetHeader().GetKey() != "x-keypool-retry" {
		t.Fatalf("429 during drain: %v, want the retry marker", resp)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream end = %v, want EOF", err)
	}
	if code := <-stopped; code != 0 {
		t.Fatalf("exit code %d, want 0\nstderr:\n%s", code, r.stderr.String())
	}
}

func TestAdminAPI(t *testing.T) {
	r := start(t, serveConfig)
	base := "http://" + r.adminAddr
	get := func(path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz", ""); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("/healthz = %d %s", code, body)
	}
	if code, body := get("/readyz", ""); code != 200 || !strings.Contains(body, `"ready"`) {
		t.Errorf("/readyz = %d %s", code, body)
	}
	if code, _ := get("/v1/keys", ""); code != 401 {
		t.Errorf("/v1/keys without token = %d, want 401", code)
	}
	if code, _ := get("/v1/keys", "wrong"); code != 401 {
		t.Errorf("/v1/keys with a wrong token = %d, want 401", code)
	}
	code, body := get("/v1/keys", testSecrets["TEST_ADMIN_TOKEN"])
	var keys struct {
		Pools []struct {
			Name string
			Keys []struct {
				ID, Hint  string
				Available bool
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &keys); code != 200 || err != nil || len(keys.Pools) != 1 || len(keys.Pools[0].Keys) != 2 {
		t.Fatalf("/v1/keys = %d %s (%v)", code, body, err)
	}
	if k := keys.Pools[0].Keys[0]; k.ID != "one" || k.Hint != "…1111" || !k.Available {
		t.Errorf("first key = %+v", k)
	}
	code, metrics := get("/metrics", "")
	if code != 200 || !strings.Contains(metrics, `envoy_keypool_key_available{key="one",pool="openai"} 1`) {
		t.Errorf("/metrics = %d, lacks key availability:\n%.500s", code, metrics)
	}
	for name, v := range testSecrets {
		if name != "TEST_ADMIN_TOKEN" && (strings.Contains(body, v) || strings.Contains(metrics, v)) {
			t.Errorf("admin API shows the value of %s", name)
		}
	}
}

func TestBadConfigExitsNonZeroNamingTheField(t *testing.T) {
	tests := []struct {
		name, config, want string
	}{
		{"missing secret", `
pools:
  - name: p
    provider: openai
    keys: [{id: a}]`, "pools[0].keys[0].secret: missing"},
		{"secret not in environment", `
pools:
  - name: p
    provider: openai
    keys: [{id: a, secret: env:TEST_UNSET_VARIABLE_XYZ}]`, "pools[0].keys[0].secret: environment variable TEST_UNSET_VARIABLE_XYZ is not set"},
		{"duplicate key id", `
pools:
  - name: p
    provider: openai
    keys: [{id: a, secret: env:TEST_OPENAI_KEY_1}, {id: a, secret: env:TEST_OPENAI_KEY_2}]`, `pools[0].keys[1].id: duplicate key id "a"`},
		{"unknown provider", `
pools:
  - name: p
    provider: cohere-ish
    keys: [{id: a, secret: env:TEST_OPENAI_KEY_1}]`, `pools[0].provider: unknown provider "cohere-ish"`},
		{"min above max", `
pools:
  - name: p
    provider: openai
    cooldowns: {unauthorized: {min: 2h, max: 1h}}
    keys: [{id: a, secret: env:TEST_OPENAI_KEY_1}]`, "pools[0].cooldowns.unauthorized: min 2h0m0s is greater than max 1h0m0s"},
		{"empty pool", `
pools:
  - name: p
    provider: openai
    keys: []`, "pools[0].keys: pool has no keys"},
		{"unknown field", `
pools:
  - name: p
    provider: openai
    keyz: []`, "field keyz not found"},
	}
	for _, tt := range tests {
		for _, cmd := range []string{"validate", "serve", "envoy-config"} {
			if cmd == "envoy-config" && tt.name == "secret not in environment" {
				continue // envoy-config reads no secret
			}
			t.Run(tt.name+"/"+cmd, func(t *testing.T) {
				setSecrets(t)
				var stdout, stderr bytes.Buffer
				code := app.Main(context.Background(), []string{cmd, "--config", writeConfig(t, tt.config)}, &stdout, &stderr)
				if code == 0 {
					t.Fatalf("exit code 0 for a bad config; stdout %s", stdout.String())
				}
				if !strings.Contains(stderr.String(), tt.want) {
					t.Errorf("stderr %q does not name the problem %q", stderr.String(), tt.want)
				}
				for _, v := range testSecrets {
					if strings.Contains(stderr.String(), v) {
						t.Error("stderr shows a secret")
					}
				}
			})
		}
	}
}

func TestValidateAcceptsTheExample(t *testing.T) {
	for _, k := range []string{"OPENAI_API_KEY_1", "OPENAI_API_KEY_2", "ANTHROPIC_API_KEY_1", "ANTHROPIC_API_KEY_2", "ENVOY_KEYPOOL_ADMIN_TOKEN"} {
		t.Setenv(k, "test-value-for-"+k)
	}
	var stdout, stderr bytes.Buffer
	if code := app.Main(context.Background(), []string{"validate", "--config", "../../../../config/example.yaml"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "valid (2 pools, 4 keys)") {
		t.Errorf("stdout = %q", stdout.String())
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
	}{
		{nil, 2}, {[]string{"frobnicate"}, 2}, {[]string{"validate"}, 2}, {[]string{"serve", "--config"}, 2},
		{[]string{"help"}, 0}, {[]string{"version"}, 0},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		if code := app.Main(context.Background(), tt.args, &stdout, &stderr); code != tt.code {
			t.Errorf("%v: exit %d, want %d (stderr %s)", tt.args, code, tt.code, stderr.String())
		}
		if stdout.Len()+stderr.Len() == 0 {
			t.Errorf("%v: printed nothing", tt.args)
		}
	}
}

func TestEnvoyConfigNeedsNoSecrets(t *testing.T) {
	for _, k := range []string{"OPENAI_API_KEY_1", "OPENAI_API_KEY_2", "ANTHROPIC_API_KEY_1", "ANTHROPIC_API_KEY_2"} {
		if _, set := os.LookupEnv(k); set {
			t.Setenv(k, "") // restores the variable after the test
			os.Unsetenv(k)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := app.Main(context.Background(), []string{"envoy-config", "--config", "../../../../config/example.yaml"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	bs, err := envoy.ParseBootstrap(stdout.Bytes())
	if err != nil {
		t.Fatalf("output is not a valid bootstrap: %v", err)
	}
	if err := envoy.CheckLoad(bs); err != nil {
		t.Errorf("output fails Envoy's load checks: %v", err)
	}
	shipped, err := os.ReadFile("../../../../envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The shipped file is this command's output for the example (its header names the
	// path it was generated from, which differs here).
	body := func(b []byte) string { _, rest, _ := strings.Cut(string(b), "\n"); return rest }
	if body(stdout.Bytes()) != body(shipped) {
		t.Error("envoy/envoy.yaml is not the output of envoy-config for config/example.yaml: run make envoy-config")
	}
}
