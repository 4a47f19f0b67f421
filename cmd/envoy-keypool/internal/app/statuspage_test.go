package app_test

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromium returns the headless browser to render pages with. .ci/run installs
// Debian's chromium and sets ENVOY_KEYPOOL_REQUIRE_CHROMIUM, so CI never skips.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("ENVOY_KEYPOOL_REQUIRE_CHROMIUM") != "" {
		t.Fatal("chromium is not installed (apt-get install chromium)")
	}
	t.Skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
	return ""
}

// renderDOM loads url in headless Chromium and returns the DOM it built.
func renderDOM(t *testing.T, browser, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run",
		"--user-data-dir="+t.TempDir(), "--dump-dom", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	return string(out)
}

func TestStatusPageInChromiumShowsEachKeysStateAfterAFailover(t *testing.T) {
	browser := chromium(t)
	r := start(t, serveConfig)
	ctx := testContext(t)
	conn := dial(t, r.grpcAddr)
	// Key one answers 429; the request is served by key two.
	key, err := request(ctx, t, conn, "openai", "failover", func(k string) int {
		if k == testSecrets["TEST_OPENAI_KEY_1"] {
			return 429
		}
		return 200
	})
	if err != nil || key != testSecrets["TEST_OPENAI_KEY_2"] {
		t.Fatalf("failover: %v", err)
	}

	dom := renderDOM(t, browser, "http://"+r.adminAddr+"/status")
	row := func(id string) string {
		m := regexp.MustCompile(`(?s)<tr id="key-` + id + `".*?</tr>`).FindString(dom)
		if m == "" {
			t.Fatalf("no row for key %s in the rendered page:\n%s", id, dom)
		}
		return m
	}
	one, two := row("one"), row("two")
	for _, want := range []string{`data-state="cooling"`, `>rate_limited<`, `class="left">`} {
		if !strings.Contains(one, want) {
			t.Errorf("key one's row lacks %q: %s", want, one)
		}
	}
	if !strings.Contains(two, `data-state="available"`) {
		t.Errorf("key two's row is not available: %s", two)
	}
	if !strings.Contains(dom, "1 of 2 keys available") {
		t.Error("the pool's summary does not say 1 of 2 keys available")
	}
	for name, v := range testSecrets {
		if strings.Contains(dom, v) {
			t.Errorf("the page shows the value of %s", name)
		}
	}
	for _, hint := range []string{"…1111", "…2222"} {
		if strings.Contains(dom, hint) {
			t.Errorf("the open page shows the hint %s", hint)
		}
	}
}
