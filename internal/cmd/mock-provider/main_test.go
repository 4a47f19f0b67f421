package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startRun starts run with args and returns the address from its listening line and a
// channel that receives run's result. The context is canceled at cleanup.
func startRun(t *testing.T, ctx context.Context, args ...string) (addr string, result <-chan error) {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw, io.Discard)
		pw.CloseWithError(io.EOF)
		done <- err
	}()

	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, pr) // keep run from blocking on later writes
	}()

	// The test's own deadline, less a margin to report, bounds the wait.
	wait := time.Minute
	if d, ok := t.Deadline(); ok {
		wait = time.Until(d) - 5*time.Second
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case line, ok := <-lines:
		if !ok {
			t.Fatalf("run exited before listening: %v", <-done)
		}
		addr, found := strings.CutPrefix(line, "mock-provider listening on ")
		if !found {
			t.Fatalf("first line = %q, want the listening line", line)
		}
		return addr, done
	case <-timer.C:
		t.Fatalf("no listening line within %s", wait)
	}
	return "", nil
}

func TestRunServesUntilCanceled(t *testing.T) {
	const key = "test-openai-key-1"
	dir := t.TempDir()
	behaviors := filepath.Join(dir, "behaviors.json")
	if err := os.WriteFile(behaviors, []byte(`{"`+key+`": {"status": 429, "headers": {"Retry-After": "7"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name           string
		args           []string
		wantStatus     int
		wantRetryAfter string
	}{
		{"unprogrammed key answers 200", []string{"--listen", "127.0.0.1:0"}, 200, ""},
		{"behaviors file programs the key", []string{"--listen", "127.0.0.1:0", "--behaviors", behaviors}, 429, "7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			addr, result := startRun(t, ctx, tt.args...)

			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+addr+"/v1/chat/completions",
				strings.NewReader(`{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+key)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			res.Body.Close()
			if res.StatusCode != tt.wantStatus || res.Header.Get("Retry-After") != tt.wantRetryAfter {
				t.Errorf("answer = %d Retry-After %q, want %d %q", res.StatusCode, res.Header.Get("Retry-After"), tt.wantStatus, tt.wantRetryAfter)
			}

			cancel()
			if err := <-result; err != nil {
				t.Errorf("run after cancel = %v, want nil", err)
			}
		})
	}
}

func TestRunRejectsBadInvocation(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"test-openai-key-1": {"status": 302}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		wantText string // in the error
	}{
		{"unknown flag", []string{"--port", "1"}, "flag provided but not defined"},
		{"stray argument", []string{"--listen", "127.0.0.1:0", "extra"}, "unexpected arguments"},
		{"missing behaviors file", []string{"--behaviors", filepath.Join(dir, "nope.json")}, "behaviors file"},
		{"invalid behavior", []string{"--behaviors", bad}, "status 302"},
		{"bad listen address", []string{"--listen", "not-an-address"}, "listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(t.Context(), tt.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.wantText)
			}
		})
	}
}

func TestRunShutdownEndsASlowKeysWait(t *testing.T) {
	const key = "test-slow-key-1"
	behaviors := filepath.Join(t.TempDir(), "behaviors.json")
	if err := os.WriteFile(behaviors, []byte(`{"`+key+`": {"delay": "1h"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	addr, result := startRun(t, ctx, "--listen", "127.0.0.1:0", "--behaviors", behaviors)

	// Cancel once the request is on the wire, so that shutdown meets it in flight.
	wrote := make(chan struct{})
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { close(wrote) }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), http.MethodPost,
		"http://"+addr+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-test"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	answered := make(chan error, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		answered <- err
	}()
	<-wrote
	cancel()

	// Without the wait ending, Shutdown would outlast its grace and run would fail.
	if err := <-result; err != nil {
		t.Errorf("run after cancel with a slow request in flight = %v, want nil", err)
	}
	if err := <-answered; err == nil {
		t.Errorf("the slow request got an answer, want the connection closed unanswered")
	}
}
