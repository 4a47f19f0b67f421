package app_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/testredis"
)

// secretMount is a directory laid out as the kubelet lays out a mounted Secret:
// each file is a symlink through ..data into a timestamped directory, and an update
// writes a new directory and swaps ..data to it with one rename (AtomicWriter).
type secretMount struct {
	t   *testing.T
	dir string
	gen int
}

func newSecretMount(t *testing.T, values map[string]string) *secretMount {
	t.Helper()
	m := &secretMount{t: t, dir: filepath.Join(t.TempDir(), "secrets")}
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m.update(values)
	return m
}

// path is where the configuration reads the secret name.
func (m *secretMount) path(name string) string { return filepath.Join(m.dir, name) }

// update replaces the whole content of the mount, as a Secret update does.
func (m *secretMount) update(values map[string]string) {
	t := m.t
	t.Helper()
	m.gen++
	gen := fmt.Sprintf("..2026_11_25_12_00_%02d.%d", m.gen, m.gen)
	if err := os.Mkdir(filepath.Join(m.dir, gen), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range values {
		if err := os.WriteFile(filepath.Join(m.dir, gen, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(m.dir, "..data"))
	tmp := filepath.Join(m.dir, "..data_tmp")
	if err := os.Symlink(gen, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(m.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range values {
		link := filepath.Join(m.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	if old != "" {
		_ = os.RemoveAll(filepath.Join(m.dir, old))
	}
}

// stateBackends runs a reload test with in-memory state and with Redis.
func stateBackends(t *testing.T, run func(t *testing.T, state string)) {
	t.Run("memory", func(t *testing.T) { run(t, "") })
	t.Run("redis", func(t *testing.T) {
		r := testredis.Start(t)
		run(t, fmt.Sprintf("state: {redis: {url: %q, prefix: %q, timeout: 150ms}}\n", r.URL(), "reload-"+t.Name()+":"))
	})
}

// reloadable is a server whose configuration file and secrets the test rewrites.
type reloadable struct {
	*running
	t       *testing.T
	state   string
	secrets *secretMount
	values  map[string]string
}

// keys is "id=secret-name" pairs in priority order for pool openai.
func (r *reloadable) configFor(keys ...string) string {
	var b strings.Builder
	b.WriteString("listen: {grpc: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\nadmin: {token: env:TEST_ADMIN_TOKEN}\nlog: {level: info, format: json}\n")
	b.WriteString(r.state)
	b.WriteString("pools:\n  - name: openai\n    provider: openai\n    keys:\n")
	for _, k := range keys {
		id, name, _ := strings.Cut(k, "=")
		fmt.Fprintf(&b, "      - {id: %s, secret: \"file:%s\"}\n", id, r.secrets.path(name))
	}
	return b.String()
}

func startReloadable(t *testing.T, state string, values map[string]string, keys ...string) *reloadable {
	t.Helper()
	setSecrets(t)
	r := &reloadable{t: t, state: state, secrets: newSecretMount(t, values), values: values}
	path := writeConfig(t, r.configFor(keys...))
	r.running = startFile(t, path)
	t.Cleanup(func() {
		out := r.stdout.String() + r.stderr.String()
		for _, v := range r.values {
			if strings.Contains(out, v) {
				t.Errorf("the process wrote a key value")
			}
		}
	})
	return r
}

// rewrite replaces the configuration file as an editor does: a new file renamed
// over the old one.
func (r *reloadable) rewrite(body string) {
	r.t.Helper()
	tmp := r.configPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Rename(tmp, r.configPath); err != nil {
		r.t.Fatal(err)
	}
}

var reloadedLine = regexp.MustCompile(`configuration reloaded`)

// waitReloads waits until the server logged n successful reloads in all.
func (r *reloadable) waitReloads(n int) {
	r.t.Helper()
	waitUntil(r.t, fmt.Sprintf("%d configuration reloads", n), 10*time.Second, func() bool {
		return len(reloadedLine.FindAllString(r.stderr.String(), -1)) >= n
	})
}

func (r *reloadable) firstKey() string {
	return firstKey(testContext(r.t), r.t, dial(r.t, r.grpcAddr), "openai")
}

func TestReloadAddedKeyServesTheNextRequest(t *testing.T) {
	stateBackends(t, func(t *testing.T, state string) {
		values := map[string]string{"one": "reload-key-one-aaaaaaaaaaaa", "zero": "reload-key-zero-bbbbbbbbbbb"}
		r := startReloadable(t, state, values, "one=one")
		if k := r.firstKey(); k != values["one"] {
			t.Fatal("the first key does not serve before the reload")
		}
		r.rewrite(r.configFor("zero=zero", "one=one")) // a new key, first in priority
		r.waitReloads(1)
		if k := r.firstKey(); k != values["zero"] {
			t.Error("the added key does not serve the next request")
		}
		if !strings.Contains(r.stderr.String(), `"keys_added":["openai/zero"]`) {
			t.Errorf("the reload log does not name the added key:\n%s", r.stderr.String())
		}
	})
}

func TestReloadRemovedKeyNeverServesAgain(t *testing.T) {
	stateBackends(t, func(t *testing.T, state string) {
		values := map[string]string{"one": "reload-key-one-aaaaaaaaaaaa", "two": "reload-key-two-ccccccccccc"}
		r := startReloadable(t, state, values, "one=one", "two=two")
		r.signals <- syscall.SIGHUP // a reload with nothing changed changes nothing
		r.rewrite(r.configFor("two=two"))
		r.waitReloads(1)
		conn := dial(t, r.grpcAddr)
		ctx := testContext(t)
		for i := range 20 {
			// Whole requests, each to its end.
			key, err := request(ctx, t, conn, "openai", fmt.Sprintf("after-removal-%d", i), func(string) int { return 200 })
			if err != nil {
				t.Fatal(err)
			}
			if key == values["one"] {
				t.Fatal("the removed key served a request")
			}
		}
		keys := adminKeys(t, r.adminAddr, testSecrets["TEST_ADMIN_TOKEN"])["openai"]
		if len(keys) != 1 || keys[0].ID != "two" {
			t.Errorf("admin API lists %+v, want only key two", keys)
		}
		if m := metrics(t, r.adminAddr); strings.Contains(m, `envoy_keypool_key_available{key="one"`) {
			t.Error("/metrics still exports the removed key's state")
		}
	})
}

func TestReloadKeepsACoolingKeyCoolingAndARotatedValueStartsClean(t *testing.T) {
	stateBackends(t, func(t *testing.T, state string) {
		values := map[string]string{"one": "reload-key-one-aaaaaaaaaaaa", "two": "reload-key-two-ccccccccccc"}
		r := startReloadable(t, state, values, "one=one", "two=two")
		ctx := testContext(t)
		conn := dial(t, r.grpcAddr)
		// Key one answers 429: it cools down (30s by default).
		if key, err := request(ctx, t, conn, "openai", "cools-one", func(k string) int {
			if k == values["one"] {
				return 429
			}
			return 200
		}); err != nil || key != values["two"] {
			t.Fatalf("failover to key two: %v", err)
		}

		// A reload that adds a key leaves key one (same id, same value) cooling.
		values["three"] = "reload-key-three-ddddddddd"
		r.secrets.update(values)
		r.rewrite(r.configFor("one=one", "two=two", "three=three"))
		r.waitReloads(1)
		if k := r.firstKey(); k != values["two"] {
			t.Error("after the reload the cooling key one served, or key two did not")
		}
		if k := adminKeys(t, r.adminAddr, testSecrets["TEST_ADMIN_TOKEN"])["openai"][0]; k.ID != "one" || k.Available || k.Reason != "rate_limited" {
			t.Errorf("key one after the reload = %+v, want cooling for rate_limited", k)
		}

		// Rotating key one's value (the Secret updated in place, ..data swapped) makes
		// it a new key behind the same id: it starts clean and serves first.
		values["one"] = "reload-key-one-rotated-eeeeeeee"
		r.secrets.update(values)
		r.waitReloads(2)
		if k := r.firstKey(); k != values["one"] {
			t.Error("the rotated value of key one is not used by the next request")
		}
		if !strings.Contains(r.stderr.String(), `"keys_rotated":["openai/one"]`) {
			t.Errorf("the reload log does not name the rotated key")
		}
	})
}

func TestReloadOfABrokenFileKeepsTheOldConfigurationAndSaysWhy(t *testing.T) {
	stateBackends(t, func(t *testing.T, state string) {
		values := map[string]string{"one": "reload-key-one-aaaaaaaaaaaa"}
		r := startReloadable(t, state, values, "one=one")
		tests := []struct {
			name, body, why string
		}{
			{"not YAML", "pools: [\n", "parse config"},
			{"a secret file that does not exist", r.configFor("one=one", "two=missing"), `pools[0].keys[1].secret: read secret file`},
			{"a duplicate key id", r.configFor("one=one", "one=one"), `pools[0].keys[1].id: duplicate key id`},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r.rewrite(tt.body)
				re := regexp.MustCompile(`configuration reload refused; the previous configuration keeps serving.*` + regexp.QuoteMeta(tt.why))
				if _, err := r.stderr.waitFor(testContext(t), re); err != nil {
					t.Fatal(err)
				}
				if k := r.firstKey(); k != values["one"] {
					t.Error("the old configuration does not serve after a refused reload")
				}
				if m := metrics(t, r.adminAddr); !strings.Contains(m, fmt.Sprintf(`envoy_keypool_config_reloads_total{result="error"} %d`, i+1)) ||
					!strings.Contains(m, "envoy_keypool_config_last_reload_successful 0") {
					t.Errorf("the refused reload is not counted:\n%s", grep(m, "config_"))
				}
			})
		}
		// Fixing the file is picked up.
		r.rewrite(r.configFor("one=one"))
		waitUntil(t, "the fixed file to be accepted", 10*time.Second, func() bool {
			return strings.Contains(metrics(t, r.adminAddr), "envoy_keypool_config_last_reload_successful 1")
		})
	})
}

func TestReloadChangingAListenerSaysItNeedsARestart(t *testing.T) {
	values := map[string]string{"one": "reload-key-one-aaaaaaaaaaaa", "two": "reload-key-two-ccccccccccc"}
	r := startReloadable(t, "", values, "one=one")
	body := strings.Replace(r.configFor("one=one", "two=two"), `grpc: "127.0.0.1:0"`, `grpc: "127.0.0.1:1"`, 1)
	r.rewrite(body)
	r.waitReloads(1)
	if !regexp.MustCompile(`takes effect only after a restart.*"field":"listen.grpc"`).MatchString(r.stderr.String()) {
		t.Errorf("no warning names listen.grpc:\n%s", r.stderr.String())
	}
	// The rest of the file is applied, on the listener already open.
	if keys := adminKeys(t, r.adminAddr, testSecrets["TEST_ADMIN_TOKEN"])["openai"]; len(keys) != 2 {
		t.Errorf("the pool change was not applied: %+v", keys)
	}
}

// A header name of the ext_proc server is read once: a reload that changes only it
// warns, keeps the running name, and so changes nothing in service.
func TestReloadChangingAHeaderNameKeepsTheRunningOne(t *testing.T) {
	values := map[string]string{"one": "reload-key-one-aaaaaaaaaaaa"}
	r := startReloadable(t, "", values, "one=one")
	r.rewrite(r.configFor("one=one") + "envoy: {retry_marker_header: x-other-retry-marker}\n")
	waitUntil(t, "the reload to be counted", 10*time.Second, func() bool {
		return strings.Contains(metrics(t, r.adminAddr), `envoy_keypool_config_reloads_total{result="unchanged"} 1`)
	})
	if !regexp.MustCompile(`takes effect only after a restart.*"field":"envoy.retry_marker_header"`).MatchString(r.stderr.String()) {
		t.Errorf("no warning names envoy.retry_marker_header:\n%s", r.stderr.String())
	}
	if m := metrics(t, r.adminAddr); !strings.Contains(m, `envoy_keypool_config_reloads_total{result="success"} 0`) {
		t.Errorf("a reload that changed only a restart-only field counted as applied:\n%s", m)
	}
}

func TestReloadLetsAThousandRequestsInFlightFinishOnTheirConfiguration(t *testing.T) {
	stateBackends(t, func(t *testing.T, state string) {
		values := map[string]string{"one": "reload-key-one-aaaaaaaaaaaa", "other": "reload-key-other-fffffffff"}
		r := startReloadable(t, state, values, "one=one")
		ctx := testContext(t)
		conn := dial(t, r.grpcAddr)
		const n = 1000
		streams := make([]*attemptStream, n)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				key, a, err := startAttempt(ctx, t, conn, "openai", fmt.Sprintf("in-flight-%d", i), 1)
				if err == nil && key != values["one"] {
					err = fmt.Errorf("attempt %d got another key", i)
				}
				streams[i] = a
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}

		// The reload removes the pool the requests in flight belong to.
		body := strings.Replace(r.configFor("other=other"), "name: openai", "name: other", 1)
		r.rewrite(body)
		r.waitReloads(1)
		if k, _, err := startAttempt(ctx, t, conn, "openai", "after-reload", 1); err != nil || k != "" {
			t.Fatalf("a new request for the removed pool got a key (%v), err %v", k != "", err)
		}

		// Each attempt started before the reload finishes on its configuration: its
		// 429 still marks key one and asks for a retry.
		errs = make(chan error, n)
		for i := range n {
			wg.Go(func() {
				marker, err := streams[i].finish(429)
				if err == nil && marker != "rate_limited" {
					err = fmt.Errorf("attempt %d: marker %q, want rate_limited", i, marker)
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		failed := 0
		for err := range errs {
			if failed == 0 {
				t.Error(err)
			}
			failed++
		}
		if failed > 0 {
			t.Errorf("%d of %d requests in flight across the reload did not complete", failed, n)
		}
	})
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
