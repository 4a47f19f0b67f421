// Command keypool-demo runs the whole envoy-keypool chain on this machine without
// Docker, and prints a curl command to watch a request fail over:
//
//	client ─▶ Envoy stand-in ─▶ envoy-keypool (2 replicas) ─▶ mock provider
//	                                 │
//	                               Redis (when redis-server is installed)
//
// The mock provider answers 429 for the first key of the openai pool, so every
// request to /openai/ is retried with the second key. It is what `make demo` runs.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/freeport"
	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
	"github.com/envoy-keypool/envoy-keypool/internal/stack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "keypool-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keypool-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("keypool-bin", "bin/envoy-keypool", "the envoy-keypool binary to run")
	root := fs.String("repo", ".", "the repository's top folder")
	if err := fs.Parse(args); err != nil {
		return err
	}

	opts := stack.Options{RepoRoot: *root, KeypoolBinary: *bin, Log: eventsOnly(stdout), LogFormat: "human"}
	stateNote := "in process memory (redis-server not installed: one replica)"
	if redisURL, stopRedis, err := startRedis(ctx); err == nil {
		defer stopRedis()
		opts.RedisURL = redisURL
		stateNote = "shared through Redis at " + redisURL
	} else {
		opts.Replicas = 1
	}

	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	s, err := stack.Start(startCtx, opts)
	cancel()
	if err != nil {
		return err
	}
	defer s.Close()

	first := s.Keys["openai"][0]
	if err := s.Mock.SetBehavior(ctx, first.Value, mockprovider.Behavior{
		Status: 429, Headers: map[string]string{"Retry-After": "30"},
	}); err != nil {
		return err
	}

	fmt.Fprintf(stdout, `
envoy-keypool demo is running; Ctrl-C stops it.

  Envoy stand-in   %s   (not Envoy: the project's test stand-in, running envoy/compose/envoy.yaml)
  envoy-keypool    %d replica(s), key state %s
  mock provider    key %q answers 429 (Retry-After: 30); every other key answers 200

Send a request; it is retried with the next key, and %s cools down for 30s:

  curl -s %s/openai/v1/chat/completions -H 'content-type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'

See the key state as a replica does:

  curl -s -H 'Authorization: Bearer %s' http://%s/v1/keys

Metrics: http://%s/metrics

Events (retries and key failures) follow.
`, s.URL, len(s.Replicas), stateNote, first.ID, first.ID, s.URL, s.AdminToken, s.Replicas[0].AdminAddr, s.Replicas[0].AdminAddr)

	<-ctx.Done()
	fmt.Fprintln(stdout, "\nstopping…")
	return nil
}

// eventsOnly forwards the lines worth watching in a demo: the stand-in's retries
// and envoy-keypool's key failures.
func eventsOnly(w io.Writer) io.Writer {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "retry") || strings.Contains(line, "key failed") || strings.Contains(line, "exhausted") {
				fmt.Fprintln(w, "  »", line)
			}
		}
	}()
	return pw
}

// startRedis runs redis-server on a free loopback port, when it is installed.
func startRedis(ctx context.Context) (string, func(), error) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, err
	}
	port, err := freeport.Port()
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "keypool-demo-redis-")
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(path, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		_ = os.RemoveAll(dir)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := (&net.Dialer{Timeout: 200 * time.Millisecond}).DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
			return "redis://" + addr, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, errors.New("redis-server did not start")
		}
		select {
		case <-ctx.Done():
			stop()
			return "", nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
