package app

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// Version is the release this binary was built from. It is a variable, not a
// constant, so that the build can set it:
//
//	go build -ldflags "-X github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app.Version=v1.2.3"
//
// The Makefile and the Dockerfile pass `git describe`. Left at "dev", the version
// reads the module version and VCS revision the Go toolchain stamped, if any.
var Version = "dev"

// MinEnvoyVersion is the oldest Envoy the product works with: an upstream ext_proc
// filter answers with local replies only since 1.36.0 (PR #41231), no longer breaks
// retries since 1.37.0 (PR #41879), and the cluster-level retry policy the generated
// configuration uses is new in 1.37.0.
const MinEnvoyVersion = "1.37.0"

// verifiedEnvoyVersions are the Envoy releases whose sources the behaviour the
// product relies on was read in (see envoy/doc.go).
func verifiedEnvoyVersions() []string { return []string{"1.37", "1.38"} }

// BuildInfo is what `envoy-keypool version` reports.
type BuildInfo struct {
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"`
	Go       string `json:"go"`
	// Envoy is the range of Envoy versions supported: ">= MinEnvoyVersion".
	Envoy         string   `json:"envoy"`
	EnvoyVerified []string `json:"envoy_verified"`
}

// buildInfo reports the version set at build time, falling back on what the Go
// toolchain recorded in the binary.
func buildInfo() BuildInfo {
	b := BuildInfo{
		Version: Version, Go: runtime.Version(),
		Envoy: ">= " + MinEnvoyVersion, EnvoyVerified: verifiedEnvoyVersions(),
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			b.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				b.Revision = s.Value
			}
		}
	}
	return b
}

func printVersion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	output := fs.String("o", "text", "output format: text or json")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || (*output != "text" && *output != "json") {
		fmt.Fprintln(stderr, "usage: envoy-keypool version [-o text|json]")
		return exitUsage
	}
	b := buildInfo()
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		_ = enc.Encode(b)
		return exitOK
	}
	fmt.Fprintf(stdout, "envoy-keypool %s", b.Version)
	if b.Revision != "" {
		fmt.Fprintf(stdout, " (%s)", b.Revision)
	}
	fmt.Fprintf(stdout, " %s\nEnvoy: %s (behaviour verified against the %s sources)\n", b.Go, b.Envoy, strings.Join(b.EnvoyVerified, " and "))
	return exitOK
}
