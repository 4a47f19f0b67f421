// Package cli is the operator's side of a replica's admin API:
//
//	envoy-keypool keys list
//	envoy-keypool keys disable POOL KEY [--for 30m]
//	envoy-keypool keys enable POOL KEY
//	envoy-keypool status
//
// The admin token is read from the ENVOY_KEYPOOL_ADMIN_TOKEN environment variable
// or from --token-file, never from the command line, where `ps` and shell history
// would show it. Output is a table for people, or with -o json the admin API's own
// JSON for scripts. The package knows the admin API's HTTP interface, nothing of the
// server's internals.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Environment variables the commands read.
const (
	EnvToken = "ENVOY_KEYPOOL_ADMIN_TOKEN"
	EnvAdmin = "ENVOY_KEYPOOL_ADMIN_URL"
)

// DefaultAdminURL is where `make run` and the example configuration serve the admin API.
const DefaultAdminURL = "http://127.0.0.1:9002"

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

const usage = `usage:
  envoy-keypool keys list                      [flags]   every pool's keys and their state
  envoy-keypool keys disable POOL KEY [--for D] [flags]  take a key out of rotation (until enabled, or for D)
  envoy-keypool keys enable POOL KEY            [flags]  return a key to rotation now
  envoy-keypool status                          [flags]  the replica: readiness, version, pools

flags:
  --admin URL        the replica's admin API (env ` + EnvAdmin + `; default ` + DefaultAdminURL + `)
  --token-file FILE  read the admin token from FILE (default: env ` + EnvToken + `)
  -o table|json      output format (default table)
  --timeout D        bound on the request (default 10s)

The token is never taken from the command line.
`

// Main runs args (starting with "keys" or "status") and returns the exit code. env
// looks up environment variables, like os.LookupEnv.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) (string, bool)) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	name := args[0]
	rest := args[1:]
	if name == "keys" {
		if len(rest) == 0 {
			fmt.Fprint(stderr, usage)
			return exitUsage
		}
		name, rest = "keys "+rest[0], rest[1:]
	}
	cmd, ok := commands()[name]
	if !ok {
		if name == "keys --help" || name == "keys -h" || name == "keys help" {
			fmt.Fprint(stdout, usage)
			return exitOK
		}
		fmt.Fprintf(stderr, "envoy-keypool: unknown command %q\n%s", name, usage)
		return exitUsage
	}
	inv, err := parse(name, rest, cmd.args, env, stderr)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "envoy-keypool %s: %v\n", name, err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, inv.timeout)
	defer cancel()
	if err := cmd.run(ctx, inv, stdout); err != nil {
		fmt.Fprintf(stderr, "envoy-keypool %s: %v\n", name, err)
		return exitFailed
	}
	return exitOK
}

// command is one subcommand: how many positional arguments it takes and what it does.
type command struct {
	args []string // names of the positional arguments
	run  func(ctx context.Context, inv *invocation, stdout io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"keys list":    {nil, listKeys},
		"keys disable": {[]string{"POOL", "KEY"}, disableKey},
		"keys enable":  {[]string{"POOL", "KEY"}, enableKey},
		"status":       {nil, status},
	}
}

// invocation is a parsed command line.
type invocation struct {
	client  *client
	output  string
	timeout time.Duration
	args    []string
	// disableFor is --for of `keys disable`; zero: until enabled.
	disableFor time.Duration
}

// parse reads flags wherever they appear among the positional arguments, as
// operators type them (`keys disable openai k1 --for 30m`).
func parse(name string, args, positional []string, env func(string) (string, bool), stderr io.Writer) (*invocation, error) {
	for _, a := range args {
		if a == "--token" || a == "-token" || strings.HasPrefix(a, "--token=") || strings.HasPrefix(a, "-token=") {
			return nil, fmt.Errorf("the token is never taken from the command line (ps and shell history would show it): set %s or use --token-file FILE", EnvToken)
		}
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	adminURL := fs.String("admin", "", "")
	tokenFile := fs.String("token-file", "", "")
	output := fs.String("o", "table", "")
	timeout := fs.Duration("timeout", 10*time.Second, "")
	var disableFor time.Duration
	if name == "keys disable" {
		fs.DurationVar(&disableFor, "for", 0, "")
	}
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w\n%s", err, usage)
		}
		if fs.NArg() == 0 {
			break
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(rest) != len(positional) {
		if len(positional) == 0 {
			return nil, fmt.Errorf("takes no arguments, got %q", rest)
		}
		return nil, fmt.Errorf("want %s, got %q", strings.Join(positional, " "), rest)
	}
	if *output != "table" && *output != "json" {
		return nil, fmt.Errorf("-o %q: want table or json", *output)
	}
	if *timeout <= 0 {
		return nil, errors.New("--timeout must be positive")
	}
	if disableFor < 0 {
		return nil, errors.New("--for must be positive")
	}
	base := *adminURL
	if base == "" {
		base, _ = env(EnvAdmin)
	}
	if base == "" {
		base = DefaultAdminURL
	}
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	token, err := readToken(*tokenFile, env)
	if err != nil {
		return nil, err
	}
	return &invocation{
		client:  &client{base: strings.TrimRight(base, "/"), token: token, http: &http.Client{}},
		output:  *output,
		timeout: *timeout,
		args:    rest, disableFor: disableFor,
	}, nil
}

// readToken reads the admin token from file, else from the environment.
func readToken(file string, env func(string) (string, bool)) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("--token-file %s is empty", file)
		}
		return t, nil
	}
	if t, ok := env(EnvToken); ok && strings.TrimSpace(t) != "" {
		return strings.TrimSpace(t), nil
	}
	return "", fmt.Errorf("no admin token: set %s or use --token-file FILE (the replica's admin.token)", EnvToken)
}
