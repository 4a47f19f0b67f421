package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app"
	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/cli"
	"github.com/envoy-keypool/envoy-keypool/internal/syncbuf"
)

const (
	adminToken = "cli-test-admin-token-0123456789"
	keyOne     = "cli-test-openai-key-one-AAAA1111"
	keyTwo     = "cli-test-openai-key-two-BBBB2222"
)

var readyLine = regexp.MustCompile(`envoy-keypool ready grpc=(\S+) admin=(\S+)`)

// startReplica serves a two-key pool and returns its admin address.
func startReplica(t *testing.T) string {
	t.Helper()
	t.Setenv("CLI_TEST_KEY_1", keyOne)
	t.Setenv("CLI_TEST_KEY_2", keyTwo)
	t.Setenv("CLI_TEST_ADMIN_TOKEN", adminToken)
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := `
listen: {grpc: "127.0.0.1:0", admin: "127.0.0.1:0"}
admin: {token: env:CLI_TEST_ADMIN_TOKEN}
pools:
  - name: openai
    provider: openai
    keys:
      - {id: one, secret: env:CLI_TEST_KEY_1}
      - {id: two, secret: env:CLI_TEST_KEY_2}
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		app.Main(ctx, []string{"serve", "--config", path, "--drain-delay", "0s"}, stdout, stderr)
	}()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := readyLine.FindStringSubmatch(stdout.String()); m != nil {
			return m[2]
		}
		select {
		case <-done:
			t.Fatalf("the replica exited:\n%s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica is not ready:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run is one CLI invocation with env as its environment.
func run(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = cli.Main(context.Background(), args, &out, &errOut, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	for _, v := range []string{keyOne, keyTwo} {
		if strings.Contains(out.String()+errOut.String(), v) {
			t.Errorf("%v printed a key value", args)
		}
	}
	return code, out.String(), errOut.String()
}

func TestKeysCommandsAgainstARunningReplica(t *testing.T) {
	admin := startReplica(t)
	env := map[string]string{cli.EnvToken: adminToken, cli.EnvAdmin: "http://" + admin}

	code, out, errOut := run(t, env, "keys", "list")
	if code != 0 || !regexp.MustCompile(`(?m)^openai\s+one\s+…1111\s+available\s*$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^openai\s+two\s+…2222\s+available\s*$`).MatchString(out) {
		t.Fatalf("keys list: exit %d\n%s%s", code, out, errOut)
	}

	code, out, errOut = run(t, env, "keys", "disable", "openai", "one", "--for", "30m")
	if code != 0 || !strings.Contains(out, "openai/one disabled: now disabled until ") {
		t.Fatalf("keys disable: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run(t, env, "keys", "list", "-o", "json")
	var listing struct {
		Pools []struct {
			Keys []struct {
				ID, Reason string
				Available  bool
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &listing); code != 0 || err != nil {
		t.Fatalf("keys list -o json: exit %d, %v\n%s", code, err, out)
	}
	if k := listing.Pools[0].Keys[0]; k.ID != "one" || k.Available || k.Reason != "disabled" {
		t.Errorf("after disable, key one = %+v", k)
	}

	code, out, errOut = run(t, env, "keys", "enable", "openai", "one")
	if code != 0 || !strings.Contains(out, "openai/one enabled: now available") {
		t.Fatalf("keys enable: exit %d\n%s%s", code, out, errOut)
	}

	code, out, errOut = run(t, env, "status")
	for _, want := range []string{"readiness  ready", "state      memory", "openai  openai    2/2"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s%s", want, out, errOut)
		}
	}
	if code != 0 {
		t.Errorf("status: exit %d", code)
	}
	code, out, _ = run(t, env, "status", "-o", "json")
	var st struct {
		Readiness    string `json:"readiness"`
		StateBackend string `json:"state_backend"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Readiness != "ready" || st.StateBackend != "memory" {
		t.Errorf("status -o json: exit %d %v %+v", code, err, st)
	}
}

func TestTokenFromAFile(t *testing.T) {
	admin := startReplica(t)
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run(t, map[string]string{}, "keys", "list", "--admin", admin, "--token-file", file); code != 0 || !strings.Contains(out, "one") {
		t.Errorf("exit %d\n%s%s", code, out, errOut)
	}
}

func TestBadInvocationsFailClearlyAndChangeNothing(t *testing.T) {
	admin := startReplica(t)
	good := map[string]string{cli.EnvToken: adminToken, cli.EnvAdmin: admin}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"wrong token", map[string]string{cli.EnvToken: "not-the-token", cli.EnvAdmin: admin},
			[]string{"keys", "disable", "openai", "one"}, 1, "the admin API refused the token (401 Unauthorized)"},
		{"no token", map[string]string{cli.EnvAdmin: admin}, []string{"keys", "disable", "openai", "one"}, 2, "no admin token: set ENVOY_KEYPOOL_ADMIN_TOKEN"},
		{"token in argv", good, []string{"keys", "disable", "openai", "one", "--token", adminToken}, 2, "never taken from the command line"},
		{"unknown pool", good, []string{"keys", "disable", "nope", "one"}, 1, `404 Not Found: no pool named "nope"`},
		{"unknown key", good, []string{"keys", "enable", "openai", "nope"}, 1, "404 Not Found"},
		{"missing arguments", good, []string{"keys", "disable", "openai"}, 2, "want POOL KEY"},
		{"bad duration", good, []string{"keys", "disable", "openai", "one", "--for", "soon"}, 2, "invalid value"},
		{"bad output", good, []string{"keys", "list", "-o", "yaml"}, 2, `-o "yaml": want table or json`},
		{"unknown command", good, []string{"keys", "rotate"}, 2, `unknown command "keys rotate"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := run(t, tt.env, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errOut, tt.code, tt.want)
			}
			if strings.Contains(errOut, adminToken) {
				t.Error("stderr shows the token")
			}
		})
	}
	// Nothing of the above changed a key.
	_, out, _ := run(t, good, "keys", "list")
	if strings.Contains(out, "disabled") {
		t.Errorf("a refused command changed a key:\n%s", out)
	}
}

func TestUnreachableReplica(t *testing.T) {
	env := map[string]string{cli.EnvToken: adminToken}
	code, _, errOut := run(t, env, "status", "--admin", "127.0.0.1:1", "--timeout", "5s")
	if code != 1 || !strings.Contains(errOut, "cannot reach the admin API at http://127.0.0.1:1") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestTheCommandLineReachesTheCLI(t *testing.T) {
	admin := startReplica(t)
	t.Setenv(cli.EnvToken, adminToken)
	t.Setenv(cli.EnvAdmin, admin)
	var out, errOut bytes.Buffer
	if code := app.Main(context.Background(), []string{"keys", "list"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "two") {
		t.Errorf("envoy-keypool keys list: exit %d\n%s%s", code, out.String(), errOut.String())
	}
}
