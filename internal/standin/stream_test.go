package standin

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Point 8: response bodies stream through: each server-sent event reaches the client
// while the upstream is still holding the rest of the response.
func TestResponseBodyStreams(t *testing.T) {
	next := make(chan struct{})
	px, _, _ := keypoolSetup(t, params{"RouteTimeout": "0s"}, nil, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i := range 3 {
			_, _ = w.Write([]byte("data: chunk" + string(rune('0'+i)) + "\n\n"))
			_ = rc.Flush()
			<-next // the next chunk waits until the client has seen this one
		}
	})
	resp, err := http.Get("http://" + px.Addr() + "/v1/chat/completions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if want := "data: chunk" + string(rune('0'+i)) + "\n"; line != want {
			t.Fatalf("event %d = %q, want %q", i, line, want)
		}
		_, _ = rd.ReadString('\n')
		next <- struct{}{}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("content-type %q", ct)
	}
}

// Point 10: the route timeout (15s by default) answers 504 "upstream request timeout"
// when no response came in time (router.cc onResponseTimeout), and it spans all
// retries.
func TestRouteTimeout(t *testing.T) {
	release := make(chan struct{})
	px, _, _ := keypoolSetup(t, params{"RouteTimeout": "0.2s"}, nil, func(_ int, _ http.ResponseWriter, _ *http.Request) {
		<-release
	})
	// Registered after the upstream's cleanup, so it runs first and frees the handler.
	t.Cleanup(func() { close(release) })
	start := time.Now()
	st, _, body := do(t, px, "GET", "/v1/models", "", nil)
	if st != 504 || body != "upstream request timeout" {
		t.Fatalf("got %d %q, want 504 upstream request timeout", st, body)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("timeout took %s", time.Since(start))
	}
	if got, _ := buildRoute("r", mustRoute(t, `{match: {prefix: "/"}, route: {cluster: c}}`)); got.timeout != 15*time.Second {
		t.Fatalf("default route timeout %s, want 15s", got.timeout)
	}
}

// A per-try timeout ends one attempt; with retry_on reset the router tries again.
func TestPerTryTimeout(t *testing.T) {
	release := make(chan struct{})
	px, _, up := keypoolSetup(t, params{"RetryPolicy": "{retry_on: reset, num_retries: 1, per_try_timeout: 0.1s, retry_back_off: {base_interval: 0.001s}}"}, nil,
		func(n int, w http.ResponseWriter, _ *http.Request) {
			if n == 0 {
				<-release
				return
			}
			_, _ = w.Write([]byte("second try"))
		})
	t.Cleanup(func() { close(release) })
	if st, _, body := do(t, px, "GET", "/v1/models", "", nil); st != 200 || !strings.Contains(body, "second") {
		t.Fatalf("got %d %q", st, body)
	}
	if n := len(up.recorded()); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
}
