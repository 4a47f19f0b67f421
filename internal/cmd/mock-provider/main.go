// Command mock-provider serves the mock provider APIs of package internal/mockprovider
// (OpenAI, Anthropic, Azure OpenAI, Gemini and the openai-compatible family), for the
// docker-compose stack and the demo:
//
//	mock-provider --listen :8080 [--behaviors behaviors.json]
//
// It prints "mock-provider listening on ADDR" once it accepts connections; scripts and
// tests wait for that line. Keys are programmed with the --behaviors file (a JSON
// object from key to behaviour) and at run time through the /_mock/ control API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// shutdownGrace bounds how long in-flight requests (a slow key's among them) may finish
// after a signal before their connections are closed.
const shutdownGrace = 5 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mock-provider:", err)
		stop()
		os.Exit(1)
	}
}

// run serves the mock until ctx ends, then shuts down gracefully and returns nil.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mock-provider", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", ":8080", "address to listen on")
	behaviorsFile := fs.String("behaviors", "", "JSON file mapping keys to behaviours to program at start")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	mock := mockprovider.New()
	if *behaviorsFile != "" {
		if err := loadBehaviors(mock, *behaviorsFile); err != nil {
			return err
		}
	}

	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           mock,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(stderr, "mock-provider: ", log.LstdFlags),
		// Requests inherit ctx so that a signal also ends a slow key's wait: Shutdown
		// does not cancel in-flight requests, and a long delay would outlast the grace.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "mock-provider listening on %s\n", ln.Addr())

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// ctx is done; the grace period needs a context of its own.
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// loadBehaviors programs mock from the JSON file at path.
func loadBehaviors(mock *mockprovider.Server, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("behaviors file: %w", err)
	}
	defer f.Close()
	m, err := mockprovider.DecodeBehaviors(f)
	if err != nil {
		return fmt.Errorf("behaviors file %s: %w", path, err)
	}
	if err := mock.SetBehaviors(m); err != nil {
		return fmt.Errorf("behaviors file %s: %w", path, err)
	}
	return nil
}
