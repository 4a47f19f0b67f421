package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app"
)

func TestVersionIsSetAtBuildTime(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "envoy-keypool")
	const v = "v1.2.3-test+abc"
	build := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app.Version="+v,
		"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version", "-o", "json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var info app.BuildInfo
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("version -o json: %v\n%s", err, out)
	}
	if info.Version != v || info.Envoy != ">= "+app.MinEnvoyVersion || len(info.EnvoyVerified) == 0 {
		t.Errorf("version -o json = %+v, want version %s and the supported Envoy versions", info, v)
	}
	text, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(text), "envoy-keypool "+v) || !strings.Contains(string(text), "Envoy: >= 1.37.0") {
		t.Errorf("version = %q, %v", text, err)
	}
}

func TestVersionWithoutBuildFlagsSaysDev(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := app.Main(context.Background(), []string{"version"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), "envoy-keypool dev") {
		t.Errorf("version = %q, want dev for a test build", stdout.String())
	}
	if code := app.Main(context.Background(), []string{"version", "-o", "yaml"}, &stdout, &stderr); code != 2 {
		t.Errorf("version -o yaml: exit %d, want 2", code)
	}
}
