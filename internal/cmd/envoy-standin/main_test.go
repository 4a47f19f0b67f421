package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// pipeWriter hands what run prints to the test as it is written.
type pipeWriter struct{ w *io.PipeWriter }

func (p pipeWriter) Write(b []byte) (int, error) { return p.w.Write(b) }

// The binary starts on a free port, prints its ready line, proxies, and shuts down
// cleanly when its context ends (SIGINT/SIGTERM in main).
func TestRunServesUntilCancelled(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "backend saw "+r.URL.Path)
	}))
	defer backend.Close()

	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--config", "testdata/minimal.yaml", "--listen", "127.0.0.1:0",
			"--endpoint", "backend=" + strings.TrimPrefix(backend.URL, "http://")}, pipeWriter{pw}, &stderr)
		_ = pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no ready line: %v (stderr %q)", err, stderr.String())
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "envoy-standin listening on ")
	if !ok {
		t.Fatalf("ready line %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(body) != "backend saw /hello" {
		t.Fatalf("body %q", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run returned %v", err)
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no config", nil, "--config is required"},
		{"missing file", []string{"--config", "testdata/absent.yaml"}, "no such file"},
		{"bad endpoint", []string{"--config", "testdata/minimal.yaml", "--endpoint", "backend"}, "cluster=host:port"},
		{"unknown cluster", []string{"--config", "testdata/minimal.yaml", "--endpoint", "nope=127.0.0.1:1"}, "unknown cluster"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := run(context.Background(), tc.args, &out, &errb)
			if err == nil || !strings.Contains(err.Error()+errb.String(), tc.want) {
				t.Fatalf("err %v (stderr %q), want %q", err, errb.String(), tc.want)
			}
		})
	}
}
