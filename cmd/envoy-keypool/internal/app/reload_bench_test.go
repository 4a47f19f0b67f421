package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// benchConfig writes a configuration of pools × keys file: secrets.
func benchConfig(b *testing.B, pools, keys int) string {
	b.Helper()
	dir := b.TempDir()
	var cfg strings.Builder
	cfg.WriteString("log: {level: error, format: json}\npools:\n")
	for p := range pools {
		fmt.Fprintf(&cfg, "  - name: pool-%d\n    provider: openai\n    keys:\n", p)
		for k := range keys {
			secret := filepath.Join(dir, fmt.Sprintf("p%d-k%d", p, k))
			if err := os.WriteFile(secret, []byte(fmt.Sprintf("bench-key-value-%d-%d-0123456789", p, k)), 0o600); err != nil {
				b.Fatal(err)
			}
			fmt.Fprintf(&cfg, "      - {id: k%d, secret: \"file:%s\"}\n", k, secret)
		}
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

func newBenchServer(b *testing.B, path string) *server {
	b.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s := &server{
		log: newLogger(io.Discard, cfg.Log), started: cfg, configPath: path, reg: reg,
		load: func() (*config.Config, error) { return config.Load(path) }, reloads: newReloadMetrics(reg),
		reloadCh: make(chan string, 1),
		state:    &stateBackend{kind: "memory", state: keypool.NewMemoryState(nil, 0), ready: func() error { return nil }},
	}
	targets, first, err := s.build(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if s.ext, err = s.newExtProc(cfg, targets); err != nil {
		b.Fatal(err)
	}
	s.cur.Store(first)
	return s
}

// BenchmarkReload is the work of one reload that changes something (reading the file
// and every secret, validating, building the pools, the swap), against reading and
// validating the same file alone (the baseline, Load).
func BenchmarkReload(b *testing.B) {
	for _, size := range []struct{ pools, keys int }{{2, 5}, {10, 20}} {
		path := benchConfig(b, size.pools, size.keys)
		b.Run(fmt.Sprintf("Load/%dx%d", size.pools, size.keys), func(b *testing.B) {
			for b.Loop() {
				if _, err := config.Load(path); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("Reload/%dx%d", size.pools, size.keys), func(b *testing.B) {
			s := newBenchServer(b, path)
			ctx := context.Background()
			for b.Loop() {
				// Forget the configuration in service, so that every reload swaps.
				s.cur.Load().cfg = &config.Config{}
				if err := s.reload(ctx, "bench"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
