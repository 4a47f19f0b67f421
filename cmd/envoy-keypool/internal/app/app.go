// Package app is the envoy-keypool command: it parses the command line, loads the
// configuration, wires the state, the pools, the ext_proc server and the admin API
// together, and runs them until its context ends. It holds no business rules.
package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/cli"
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
        [--drain-delay D] [--shutdown-timeout D]
  validate --config FILE      check a configuration (secrets and certificates included) and exit
  envoy-config --config FILE  print the Envoy bootstrap generated from a configuration
  check-envoy --config FILE ENVOY_FILE
                              check an Envoy bootstrap or /config_dump for envoy-keypool
  keys list|disable|enable    list or change keys through a replica's admin API (keys --help)
  status                      a replica's readiness, configuration and keys (status --help)
  version [-o json]           print the version and the Envoy versions it supports
`

// Main runs the command line args and returns the process exit code. It returns
// when the command is done or, for serve, after ctx ends (taken as SIGTERM: drain,
// then stop).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return Run(ctx, args, stdout, stderr, nil)
}

// Run is Main with the process's signals: for serve, SIGHUP reloads the
// configuration, SIGTERM or SIGINT shut down (drain, then stop), and a second one
// during the shutdown stops at once.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, signals <-chan os.Signal) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	if cmd != "serve" && signals != nil {
		// Only serve drains; any other command ends on the first SIGINT or SIGTERM.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		stop := stopSignal(signals, ctx.Done())
		go func() {
			select {
			case <-ctx.Done():
			case <-stop:
				cancel()
			}
		}()
	}
	switch cmd {
	case "serve":
		return runWithConfig(cmd, rest, stderr, config.Load, func(cfg *config.Config, f *flags) error {
			applyShutdownFlags(cfg, f)
			load := func() (*config.Config, error) {
				c, err := config.Load(f.config)
				if err == nil {
					applyShutdownFlags(c, f) // flags keep overriding the file
				}
				return c, err
			}
			return serve(ctx, cfg, serveOptions{ConfigPath: f.config, Load: load, Signals: signals, Stdout: stdout, Stderr: stderr})
		})
	case "validate":
		return runWithConfig(cmd, rest, stderr, config.Load, func(cfg *config.Config, f *flags) error {
			if cfg.Listen.TLS != nil {
				if _, err := loadServerTLS(cfg.Listen.TLS); err != nil {
					return err
				}
			}
			if exposed, why := cfg.Listen.Exposed(); exposed {
				fmt.Fprintf(stderr, "WARNING: %s\n", why)
			}
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
	case "keys", "status":
		return cli.Main(ctx, args, stdout, stderr, os.LookupEnv)
	case "version":
		return printVersion(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "envoy-keypool: unknown command %q\n%s", cmd, usage)
	return exitUsage
}

type flags struct {
	config string
	// drainDelay and shutdownTimeout are nil unless given on the command line, where
	// they override the configuration file.
	drainDelay, shutdownTimeout *time.Duration
}

func applyShutdownFlags(cfg *config.Config, f *flags) {
	if f.drainDelay != nil {
		d := config.Duration(*f.drainDelay)
		cfg.Shutdown.DrainDelay = &d
	}
	if f.shutdownTimeout != nil {
		cfg.Shutdown.Timeout = config.Duration(*f.shutdownTimeout)
	}
}

// runWithConfig parses the flags every command shares, loads the configuration with
// load and runs fn, turning errors into a message on stderr and an exit code.
func runWithConfig(cmd string, args []string, stderr io.Writer, load func(string) (*config.Config, error),
	fn func(*config.Config, *flags) error) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f flags
	fs.StringVar(&f.config, "config", "", "configuration file (required)")
	var drain, timeout time.Duration
	if cmd == "serve" {
		fs.DurationVar(&drain, "drain-delay", config.DefaultDrainDelay,
			"on SIGTERM, how long to keep serving new streams while Envoy's health checks take the replica out (overrides shutdown.drain_delay)")
		fs.DurationVar(&timeout, "shutdown-timeout", config.DefaultShutdownTimeout,
			"after the drain delay, how long in-flight ext_proc streams may take to finish (overrides shutdown.timeout)")
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if f.config == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "envoy-keypool %s: --config FILE is required and takes no arguments\n", cmd)
		return exitUsage
	}
	fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "drain-delay":
			f.drainDelay = &drain
		case "shutdown-timeout":
			f.shutdownTimeout = &timeout
		}
	})
	if (f.drainDelay != nil && *f.drainDelay < 0) || (f.shutdownTimeout != nil && *f.shutdownTimeout <= 0) {
		fmt.Fprintf(stderr, "envoy-keypool %s: --drain-delay must not be negative and --shutdown-timeout must be positive\n", cmd)
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
