package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// keypoolBinary is the envoy-keypool binary TestMain built for this run.
var keypoolBinary string

// repoRoot is the repository's top folder.
const repoRoot = ".."

// keypoolBinaryEnv names an envoy-keypool binary already built, for a child run of
// the suite (TestSuiteOverUnixSocket).
const keypoolBinaryEnv = "KEYPOOL_E2E_BINARY"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if bin := os.Getenv(keypoolBinaryEnv); bin != "" {
		keypoolBinary = bin
		return m.Run()
	}
	if os.Getenv("KEYPOOL_E2E_TARGET") != "compose" {
		dir, err := os.MkdirTemp("", "envoy-keypool-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		keypoolBinary = filepath.Join(dir, "envoy-keypool")
		// The race detector watches the real binary too.
		build := exec.Command("go", "build", "-race", "-o", keypoolBinary, "./cmd/envoy-keypool")
		build.Dir = repoRoot
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build envoy-keypool:", err)
			return 1
		}
	}
	return m.Run()
}
