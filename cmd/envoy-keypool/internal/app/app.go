// Package app is the envoy-keypool command: it parses the command line, loads the
// configuration, wires the state, the pools, the ext_proc server and the admin API
// together, and runs them until its context ends. It holds no business rules.
package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

const usage = `usage: envoy-keypool <command> [flags]

commands:
  serve --config FILE         serve ext_proc, gRPC health and the admin API
  validate --config FILE      check a configuration (secrets included) and exit
  envoy-config --config FILE  print the Envoy bootstrap generated from a configuration
  check-envoy --config FILE ENVOY_FILE
                              check an Envoy bootstrap or /config_dump for envoy-keypool
  version                     print the version
`

// Version is the build's version, set with -ldflags "-X …/app.Version=v1.2.3".
const Version = "dev"

// Main runs the command line args and returns the process exit code. It returns
// when ctx ends (serve) or the command is done.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return runWithConfig(cmd, rest, stderr, config.Load, func(cfg *config.Config, f *flags) error {
			return serve(ctx, cfg, serveOptions{ShutdownTimeout: f.shutdownTimeout, Stdout: stdout, Stderr: stderr})
		})
	case "validate":
		return runWithConfig(cmd, rest, stderr, config.Load, func(cfg *config.Config, f *flags) error {
			keys := 0
			for _, p := range cfg.Pools {
				keys += len(p.Keys)
			}
			fmt.Fprintf(stdout, "%s: valid (%d pools, %d keys)\n", f.config, len(cfg.Pools), keys)
			return nil
		})
	case "envoy-config":
		// The Envoy configuration needs the pools, not their keys: it can be generated
		// where the secrets are not.
		return runWithConfig(cmd, rest, stderr, config.LoadWithoutSecrets, func(cfg *config.Config, f *flags) error {
			return envoy.WriteConfig(stdout, cfg, f.config)
		})
	case "check-envoy":
		return checkEnvoy(rest, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "envoy-keypool", Version)
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "envoy-keypool: unknown command %q\n%s", cmd, usage)
	return exitUsage
}

type flags struct {
	config          string
	shutdownTimeout time.Duration
}

// runWithConfig parses the flags every command shares, loads the configuration with
// load and runs fn, turning errors into a message on stderr and an exit code.
func runWithConfig(cmd string, args []string, stderr io.Writer, load func(string) (*config.Config, error),
	fn func(*config.Config, *flags) error) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f flags
	fs.StringVar(&f.config, "config", "", "configuration file (required)")
	if cmd == "serve" {
		fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second,
			"how long in-flight ext_proc streams may take to finish on SIGTERM")
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if f.config == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "envoy-keypool %s: --config FILE is required and takes no arguments\n", cmd)
		return exitUsage
	}
	cfg, err := load(f.config)
	if err != nil {
		fmt.Fprintf(stderr, "envoy-keypool %s: invalid configuration:\n%s\n", cmd, indent(err))
		return exitFailed
	}
	if err := fn(cfg, &f); err != nil {
		fmt.Fprintf(stderr, "envoy-keypool %s: %v\n", cmd, err)
		return exitFailed
	}
	return exitOK
}

// indent puts each line of a (joined) error on its own indented line.
func indent(err error) string {
	return "  " + strings.ReplaceAll(err.Error(), "\n", "\n  ")
}
