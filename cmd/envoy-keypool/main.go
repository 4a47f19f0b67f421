// Command envoy-keypool is the Envoy ext_proc server that injects API keys from a
// pool and fails over to the next key when a provider rejects one.
//
//	envoy-keypool serve --config FILE         serve ext_proc, gRPC health and the admin API
//	envoy-keypool validate --config FILE      check a configuration and exit
//	envoy-keypool envoy-config --config FILE  print the Envoy bootstrap for a configuration
//	envoy-keypool keys list|disable|enable    act on keys through a replica's admin API
//	envoy-keypool status                      a replica's state, through its admin API
//	envoy-keypool version                     the version and the Envoy versions it supports
//
// main only wires signals; everything else is in internal/app, where tests run it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app"
)

func main() {
	// SIGHUP reloads the configuration; SIGTERM and SIGINT shut down (drain, then
	// stop), and a second one stops at once. The signals stay caught until the
	// process exits: one more arriving as it ends must not change its exit status.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	os.Exit(app.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, signals))
}
