package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app"
)

const checkEnvoyRepo = "../../../.."

func runCheckEnvoy(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = app.Main(context.Background(), append([]string{"check-envoy"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

func checkEnvoyTemp(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The shipped Envoy configurations pass check-envoy against the envoy-keypool configs
// they are generated from, with or without their secrets in the environment.
func TestCheckEnvoyPassesTheShippedConfigs(t *testing.T) {
	for _, pair := range [][2]string{
		{"config/example.yaml", "envoy/envoy.yaml"},
		{"envoy/compose/keypool.yaml", "envoy/compose/envoy.yaml"},
	} {
		code, stdout, stderr := runCheckEnvoy(t, "--config", filepath.Join(checkEnvoyRepo, pair[0]), filepath.Join(checkEnvoyRepo, pair[1]))
		if code != 0 || stdout != "" || !strings.Contains(stderr, "no problems") {
			t.Errorf("%s: exit %d\nstdout: %s\nstderr: %s", pair[1], code, stdout, stderr)
		}
	}
}

// A hand-edited bootstrap that breaks envoy-keypool exits 1 and prints each problem
// with its field path; -o json gives the same as a list. The Envoy file may come
// before the flags.
func TestCheckEnvoyNamesEachProblem(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join(checkEnvoyRepo, "envoy/compose/envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	broken := strings.Replace(string(shipped), "failure_mode_allow: false", "failure_mode_allow: true", 1)
	broken = strings.Replace(broken, "retry_on: retriable-headers,reset-before-request", "retry_on: retriable-headers,5xx", 1)
	broken = strings.Replace(broken, "include_request_attempt_count: true", "include_request_attempt_count: false", 1)
	path := checkEnvoyTemp(t, "envoy.yaml", broken)
	cfg := filepath.Join(checkEnvoyRepo, "envoy/compose/keypool.yaml")

	code, stdout, stderr := runCheckEnvoy(t, "--config", cfg, path)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	for _, want := range []string{
		`cluster "openai": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].http_filters[0].typed_config.failure_mode_allow: `,
		`cluster "openai": typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].retry_policy.retry_on: "5xx"`,
		`listener "llm": filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].include_request_attempt_count: `,
	} {
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, want)
		}
		if !found {
			t.Errorf("no line starting %q in:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "3 problems") {
		t.Errorf("summary: %s", stderr)
	}

	code, stdout, _ = runCheckEnvoy(t, path, "-o", "json", "--config", cfg)
	var got []struct{ Path, Message string }
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || code != 1 || len(got) != len(lines) {
		t.Fatalf("exit %d, %d JSON problems (want %d), %v:\n%s", code, len(got), len(lines), err, stdout)
	}
	if got[0].Path == "" || got[0].Message == "" {
		t.Errorf("empty problem %+v", got[0])
	}
}

// What check-envoy cannot check exits 2 with a message that names the reason, never a
// panic or a list of problems: wrong flags, a bad envoy-keypool config, a file that is
// not an Envoy configuration, truncated JSON, a config dump of an Envoy too old.
func TestCheckEnvoyBadInputExits2(t *testing.T) {
	cfg := filepath.Join(checkEnvoyRepo, "envoy/compose/keypool.yaml")
	envoyFile := filepath.Join(checkEnvoyRepo, "envoy/compose/envoy.yaml")
	oldDump := `{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {"node": {"id": "e", "user_agent_build_version": {"version": {"major_number": 1, "minor_number": 35, "patch": 3}}}}}]}`
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no Envoy file", []string{"--config", cfg}, "usage: envoy-keypool check-envoy"},
		{"two Envoy files", []string{"--config", cfg, envoyFile, envoyFile}, "usage: envoy-keypool check-envoy"},
		{"no config", []string{envoyFile}, "usage: envoy-keypool check-envoy"},
		{"unknown output", []string{"--config", cfg, "-o", "xml", envoyFile}, "usage: envoy-keypool check-envoy"},
		{"missing Envoy file", []string{"--config", cfg, filepath.Join(t.TempDir(), "nope.yaml")}, "no such file"},
		{"invalid envoy-keypool config", []string{"--config", checkEnvoyTemp(t, "k.yaml", "pools: [{name: x}]\n"), envoyFile}, "invalid configuration"},
		{"the envoy-keypool config as Envoy file", []string{"--config", cfg, cfg}, "not an Envoy bootstrap or config dump"},
		{"truncated JSON", []string{"--config", cfg, checkEnvoyTemp(t, "dump.json", `{"configs": [{"@type": "type.googleapis.com/envoy.adm`)}, "parse JSON: unexpected EOF"},
		{"config dump of Envoy 1.35", []string{"--config", cfg, checkEnvoyTemp(t, "old.json", oldDump)}, "Envoy 1.35.3; envoy-keypool needs Envoy 1.37 or later"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCheckEnvoy(t, tt.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr does not contain %q:\n%s", tt.want, stderr)
			}
		})
	}
}
