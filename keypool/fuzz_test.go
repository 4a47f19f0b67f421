package keypool_test

import (
	"testing"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// FuzzModelName: whatever a client sends as a model, its scope name is short, of
// the safe alphabet, stable, and distinct from any kept name.
func FuzzModelName(f *testing.F) {
	for _, s := range []string{"", "gpt-4o", "models/gemini-2.5-pro", "claude-sonnet-4-5@20250929", "{pool}",
		"a b", "\x00", "modèle", string(make([]byte, 200))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, model string) {
		got := keypool.ModelName(model)
		if got != keypool.ModelName(model) {
			t.Fatalf("ModelName(%q) is not stable", model)
		}
		if len(got) > keypool.MaxModelLen {
			t.Fatalf("ModelName(%q) = %q: longer than %d", model, got, keypool.MaxModelLen)
		}
		for i := 0; i < len(got); i++ {
			c := got[i]
			ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '~' ||
				c == '.' || c == '_' || c == ':' || c == '/' || c == '@' || c == '+' || c == '-'
			if !ok {
				t.Fatalf("ModelName(%q) = %q holds %q", model, got, c)
			}
		}
		if got != model && (got == "" || got[0] != '~') {
			t.Fatalf("ModelName(%q) = %q: a changed name must be a hash", model, got)
		}
	})
}
