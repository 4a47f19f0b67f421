package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
	"github.com/envoy-keypool/envoy-keypool/internal/stack"
)

// configLoaded is when replica i loaded the configuration it serves.
func (tg *target) configLoaded(t *testing.T, i int) time.Time {
	t.Helper()
	req, _ := http.NewRequestWithContext(testCtx(t), http.MethodGet, tg.adminURLs[i]+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+tg.adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		ConfigLoaded time.Time `json:"config_loaded"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.ConfigLoaded
}

// reloaded runs change and waits until every replica serves a configuration loaded
// after it.
func (tg *target) reloaded(t *testing.T, what string, change func() error) {
	t.Helper()
	before := make([]time.Time, len(tg.adminURLs))
	for i := range tg.adminURLs {
		before[i] = tg.configLoaded(t, i)
	}
	if err := change(); err != nil {
		t.Fatal(err)
	}
	for i := range tg.adminURLs {
		waitFor(t, fmt.Sprintf("replica %d to reload after %s", i+1, what), 10*time.Second, func() bool {
			return tg.configLoaded(t, i).After(before[i])
		})
	}
}

// openaiKeys edits the keys of the openai pool in the configuration tree.
func openaiKeys(tree map[string]any, edit func(keys []any) []any) {
	for _, p := range tree["pools"].([]any) {
		pm := p.(map[string]any)
		if pm["name"] == "openai" {
			pm["keys"] = edit(pm["keys"].([]any))
		}
	}
}

// servedOnlyBy sends n requests (they reach both replicas) and reports whether the
// provider saw exactly want on each.
func servedOnlyBy(t *testing.T, tg *target, n int, want string) bool {
	t.Helper()
	if err := tg.mock.ClearRequests(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	for range n {
		if _, err := openaiChat("openai", placeholderKey, false)(testCtx(t), tg); err != nil {
			t.Fatal(err)
		}
	}
	got := servedBy(t, tg)
	for _, k := range got {
		if k != want {
			return false
		}
	}
	return len(got) == n
}

func TestReloadThroughTheStack(t *testing.T) {
	tg := startTargetWith(t, func(o *stack.Options) { o.SecretFiles = true })
	if tg.local == nil {
		t.Skip("edits the local stack's files")
	}
	s := tg.local
	key1 := tg.keys["openai"][0]

	t.Run("a rotated file secret is used by the next request", func(t *testing.T) {
		rotated := "fake-openai-rotated-" + fmt.Sprint(time.Now().UnixNano())
		tg.reloaded(t, "the rotation", func() error { _, err := s.SetKey("openai", key1.ID, rotated); return err })
		if !servedOnlyBy(t, tg, 4, rotated) {
			t.Error("a request after the rotation was not served by the rotated value")
		}
	})

	t.Run("a key added serves the next request", func(t *testing.T) {
		ref, err := s.SetKey("openai", "openai-0", "fake-openai-added-"+fmt.Sprint(time.Now().UnixNano()))
		if err != nil {
			t.Fatal(err)
		}
		tg.reloaded(t, "adding openai-0 first", func() error {
			return s.EditConfig(func(tree map[string]any) {
				openaiKeys(tree, func(keys []any) []any {
					return append([]any{map[string]any{"id": "openai-0", "secret": ref}}, keys...)
				})
			})
		})
		if !servedOnlyBy(t, tg, 4, s.Keys["openai"][0].Value) {
			t.Error("the added key did not serve the requests after the reload")
		}
	})

	t.Run("a key removed never serves again", func(t *testing.T) {
		removed := s.Keys["openai"][0]
		tg.reloaded(t, "removing openai-0", func() error {
			return s.EditConfig(func(tree map[string]any) {
				openaiKeys(tree, func(keys []any) []any { return keys[1:] })
			})
		})
		if !servedOnlyBy(t, tg, 6, s.Keys["openai"][0].Value) {
			t.Errorf("after removing %s, a request was served by another key than the first left", removed.ID)
		}
	})

	t.Run("a cooling key with an unchanged id stays cooling", func(t *testing.T) {
		first := s.Keys["openai"][0]
		if err := tg.mock.SetBehavior(testCtx(t), first.Value, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "300"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := openaiChat("openai", placeholderKey, false)(testCtx(t), tg); err != nil {
			t.Fatal(err)
		}
		tg.reloaded(t, "a change of another key's cooldown rule", func() error {
			return s.EditConfig(func(tree map[string]any) {
				for _, p := range tree["pools"].([]any) {
					if pm := p.(map[string]any); pm["name"] == "openai" {
						pm["cooldowns"] = map[string]any{"forbidden": map[string]any{"default": "20s"}}
					}
				}
			})
		})
		for i := range tg.adminURLs {
			ks, err := tg.adminKeys(testCtx(t), i, "openai")
			if err != nil || !ks[first.ID].cooling("rate_limited") {
				t.Errorf("replica %d after the reload: %s = %+v (%v), want cooling for rate_limited", i+1, first.ID, ks[first.ID], err)
			}
		}
		if !servedOnlyBy(t, tg, 4, s.Keys["openai"][1].Value) {
			t.Error("a request reached the cooling key after the reload")
		}
	})

	t.Run("a broken file leaves the old configuration serving and says why", func(t *testing.T) {
		want := s.Keys["openai"][1].Value
		if err := s.EditConfig(func(tree map[string]any) {
			openaiKeys(tree, func(keys []any) []any {
				return append(keys, map[string]any{"id": "openai-9", "secret": "file:/nonexistent/openai-9"})
			})
		}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "every replica to refuse the broken file", 10*time.Second, func() bool {
			for i := range tg.adminURLs {
				if !tg.reloadRefused(t, i) {
					return false
				}
			}
			return true
		})
		if !servedOnlyBy(t, tg, 4, want) {
			t.Error("the old configuration did not keep serving after a broken file")
		}
	})
}

// reloadRefused reports whether replica i says its last reload was refused, naming
// the bad field.
func (tg *target) reloadRefused(t *testing.T, i int) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tg.adminURLs[i]+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+tg.adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var st struct {
		LastReloadError string `json:"last_reload_error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&st)
	return strings.Contains(st.LastReloadError, ".secret: read secret file") && strings.Contains(st.LastReloadError, "openai-9")
}
