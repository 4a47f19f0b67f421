// Command envoy-standin runs the Envoy stand-in (package internal/standin) on an Envoy
// bootstrap YAML, for local runs and tests on machines without an Envoy binary. It is
// not Envoy: it reproduces the behaviour envoy-keypool relies on and refuses
// configuration it does not implement.
//
//	envoy-standin --config envoy.yaml [--listen 127.0.0.1:10000] [--endpoint cluster=host:port,...] [--verbose]
//
// An endpoint may also be cluster=unix:/path/to.sock, a Unix domain socket (an Envoy
// pipe address).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/envoy-keypool/envoy-keypool/envoy"
	"github.com/envoy-keypool/envoy-keypool/internal/standin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "envoy-standin:", err)
		os.Exit(1)
	}
}

// endpointFlag collects --endpoint cluster=host:port[,cluster=host:port...] values.
type endpointFlag map[string][]string

func (e endpointFlag) String() string { return fmt.Sprint(map[string][]string(e)) }

func (e endpointFlag) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		cluster, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || cluster == "" || addr == "" {
			return fmt.Errorf("want cluster=host:port or cluster=unix:/path, got %q", part)
		}
		e[cluster] = append(e[cluster], addr)
	}
	return nil
}

// run starts the stand-in and blocks until ctx ends, then shuts down gracefully.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("envoy-standin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "Envoy bootstrap YAML (required)")
	listen := fs.String("listen", "", "listen address, overriding the listener's (e.g. 127.0.0.1:0)")
	verbose := fs.Bool("verbose", false, "log stand-in events to stderr")
	endpoints := endpointFlag{}
	fs.Var(endpoints, "endpoint", "override a cluster's endpoints: cluster=host:port or cluster=unix:/path (repeatable, comma-separated)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("--config is required")
	}
	bs, err := envoy.LoadBootstrap(*configPath)
	if err != nil {
		return err
	}
	opts := standin.Options{ListenAddr: *listen, Endpoints: endpoints}
	if *verbose {
		opts.Log = stderr
	}
	p, err := standin.New(bs, opts)
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "envoy-standin listening on %s\n", p.Addr())
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.Shutdown(shutdownCtx)
}
