package main

import (
	"context"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/syncbuf"
)

// TestDemoShowsAFailover runs what `make demo` runs and follows its instructions: the
// printed curl gets an answer, and the failover it promises shows in its events.
func TestDemoShowsAFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the whole chain")
	}
	bin := filepath.Join(t.TempDir(), "envoy-keypool")
	build := exec.Command("go", "build", "-o", bin, "./cmd/envoy-keypool")
	build.Dir = "../../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--keypool-bin", bin, "--repo", "../../.."}, out, out) }()

	waitFor := func(re *regexp.Regexp) []string {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			if m := re.FindStringSubmatch(out.String()); m != nil {
				return m
			}
			select {
			case err := <-done:
				t.Fatalf("demo ended early (%v):\n%s", err, out.String())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %q in:\n%s", re, out.String())
			}
		}
	}
	url := waitFor(regexp.MustCompile(`curl -s (http://\S+/openai/v1/chat/completions)`))[1]
	resp, err := http.Post(url, "application/json",
		strings.NewReader(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the demo's curl got %d, want 200 from the second key", resp.StatusCode)
	}
	waitFor(regexp.MustCompile(`key failed; marked and retrying.*key=openai-1`))
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("demo: %v", err)
	}
}
