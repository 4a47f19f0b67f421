package envoy_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = ".."

// fakeEnv resolves every env: secret to a fake value, so that the paired envoy-keypool
// configs load in tests exactly as they do in production, minus the keys.
func fakeEnv(name string) (string, bool) { return "test-fake-value-of-" + name, true }

// loadKeypoolConfig loads an envoy-keypool config (path relative to the repository
// root) with fake secrets.
func loadKeypoolConfig(t *testing.T, path string) *config.Config {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := config.Read(f, fakeEnv)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}
