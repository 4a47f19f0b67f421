package envoy_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

var update = flag.Bool("update", false, "rewrite the shipped Envoy configurations from their envoy-keypool configs")

// shipped pairs every generated Envoy configuration with the envoy-keypool config it
// is generated from (paths relative to the repository root).
var shipped = []struct{ source, out string }{
	{"config/example.yaml", "envoy/envoy.yaml"},
	{"envoy/compose/keypool.yaml", "envoy/compose/envoy.yaml"},
}

// The shipped Envoy configurations are exactly the generator's output: nobody edits
// them by hand, and a change to the generator or to an envoy-keypool config that is
// not regenerated fails here. Regenerate with -update.
func TestShippedConfigsAreGenerated(t *testing.T) {
	for _, s := range shipped {
		t.Run(s.out, func(t *testing.T) {
			// What `envoy-keypool envoy-config --config SOURCE` does: no secret needed.
			cfg, err := config.LoadWithoutSecrets(filepath.Join(repoRoot, s.source))
			if err != nil {
				t.Fatal(err)
			}
			var want bytes.Buffer
			if err := envoy.WriteConfig(&want, cfg, s.source); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(repoRoot, s.out)
			if *update {
				if err := os.WriteFile(path, want.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (regenerate: go test ./envoy/ -run %s -update)", err, t.Name())
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Errorf("%s is not the output of `envoy-keypool envoy-config --config %s`; regenerate: go test ./envoy/ -run TestShippedConfigsAreGenerated -update", s.out, s.source)
			}
		})
	}
}
