// Command envoy-keypool is the Envoy ext_proc server that injects API keys from a
// pool and fails over to the next key when a provider rejects one.
//
//	envoy-keypool serve --config FILE         serve ext_proc, gRPC health and the admin API
//	envoy-keypool validate --config FILE      check a configuration and exit
//	envoy-keypool envoy-config --config FILE  print the Envoy bootstrap for a configuration
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := app.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
