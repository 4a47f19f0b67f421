package providers_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/providers"
)

func customHeader(t testing.TB) providers.Provider {
	t.Helper()
	p, err := providers.Build(providers.Spec{Name: providers.NameOpenAICompatible,
		Compatible: providers.CompatibleOptions{AuthHeader: "x-llm-key", AuthScheme: "Key"}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAuthHeaderCarriesTheKey(t *testing.T) {
	tests := []struct {
		name     string
		provider providers.Provider
		want     providers.Header
	}{
		{"openai", providers.OpenAI{}, providers.Header{Name: "authorization", Value: "Bearer test-key"}},
		{"anthropic", providers.Anthropic{}, providers.Header{Name: "x-api-key", Value: "test-key"}},
		{"azure", providers.AzureOpenAI{}, providers.Header{Name: "api-key", Value: "test-key"}},
		{"gemini", providers.Gemini{}, providers.Header{Name: "x-goog-api-key", Value: "test-key"}},
		{"groq", compatible(t, "groq"), providers.Header{Name: "authorization", Value: "Bearer test-key"}},
		{"custom header and scheme", customHeader(t), providers.Header{Name: "x-llm-key", Value: "Key test-key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.provider.AuthHeader("test-key")
			if got != tt.want {
				t.Errorf("AuthHeader = %+v, want %+v", got, tt.want)
			}
			// The provider reads back exactly the key it was given.
			if back := tt.provider.ClientCredential(headerMap{got.Name: got.Value}); back != "test-key" {
				t.Errorf("ClientCredential of its own auth header = %q, want the key", back)
			}
		})
	}
}

// TestInjectionLeavesNoClientCredential plays what extproc does on a pooled request
// with BYOK denied: remove every CredentialHeaders header but the auth header, set the
// auth header, strip the path's credential. The provider must then read the pool's key
// and nothing the client sent may be left.
func TestInjectionLeavesNoClientCredential(t *testing.T) {
	const clientKey, poolKey = "client-secret-value", "pool-key-value"
	client := headerMap{
		"authorization":  "Bearer " + clientKey,
		"x-api-key":      clientKey,
		"api-key":        clientKey,
		"x-goog-api-key": clientKey,
		"x-llm-key":      "Key " + clientKey,
		":path":          "/v1beta/models/gemini-2.0-flash:generateContent?key=" + clientKey + "&alt=sse",
		"content-type":   "application/json",
	}
	for _, p := range append(allProviders(t), customHeader(t)) {
		name := p.Name()
		if c, ok := p.(providers.Compatible); ok {
			name += "/" + c.Preset().Name
		}
		t.Run(name, func(t *testing.T) {
			h := maps.Clone(client)
			auth := p.AuthHeader(poolKey)
			for _, n := range providers.CredentialHeaders() {
				if n != auth.Name {
					delete(h, n)
				}
			}
			h[auth.Name] = auth.Value
			if path, ok := p.StripPathCredential(h[":path"]); ok {
				h[":path"] = path
			}
			if got := p.ClientCredential(h); got != poolKey {
				t.Errorf("after injection the provider reads %q, want the pool key", got)
			}
			for n, v := range h {
				// x-llm-key is no header of the other providers: only the pool whose
				// auth header it is overwrites it.
				if strings.Contains(v, clientKey) && (n != "x-llm-key" || auth.Name == n) {
					t.Errorf("client credential left in %s: %q", n, v)
				}
			}
		})
	}
}

func TestClientCredentialForBYOK(t *testing.T) {
	gemini, azure, custom := providers.Gemini{}, providers.AzureOpenAI{}, customHeader(t)
	tests := []struct {
		name     string
		provider providers.Provider
		headers  headerMap
		want     string
	}{
		{"openai bearer", providers.OpenAI{}, headerMap{"authorization": "Bearer client-key"}, "client-key"},
		{"openai lower-case scheme", providers.OpenAI{}, headerMap{"authorization": "bearer client-key"}, "client-key"},
		{"openai empty bearer", providers.OpenAI{}, headerMap{"authorization": "Bearer "}, ""},
		{"openai basic auth is not a key", providers.OpenAI{}, headerMap{"authorization": "Basic Zm9vOmJhcg=="}, ""},
		{"openai none", providers.OpenAI{}, headerMap{}, ""},
		{"openai ignores x-api-key", providers.OpenAI{}, headerMap{"x-api-key": "client-key"}, ""},
		{"anthropic x-api-key", providers.Anthropic{}, headerMap{"x-api-key": "client-key"}, "client-key"},
		{"anthropic bearer", providers.Anthropic{}, headerMap{"authorization": "Bearer client-key"}, "client-key"},
		{"anthropic prefers x-api-key", providers.Anthropic{}, headerMap{"x-api-key": "a", "authorization": "Bearer b"}, "a"},
		{"anthropic none", providers.Anthropic{}, headerMap{"anthropic-version": "2023-06-01"}, ""},
		{"azure api-key", azure, headerMap{"api-key": "client-key"}, "client-key"},
		{"azure Entra ID token", azure, headerMap{"authorization": "Bearer eyJ0eXAiOiJKV1Qi"}, "eyJ0eXAiOiJKV1Qi"},
		{"azure prefers api-key", azure, headerMap{"api-key": "a", "authorization": "Bearer b"}, "a"},
		{"azure ignores x-api-key", azure, headerMap{"x-api-key": "client-key"}, ""},
		{"gemini header", gemini, headerMap{"x-goog-api-key": "client-key"}, "client-key"},
		{"gemini ?key=", gemini, headerMap{":path": "/v1beta/models/m:generateContent?key=client-key"}, "client-key"},
		{"gemini ?key= among others, escaped", gemini, headerMap{":path": "/v1beta/models/m:streamGenerateContent?alt=sse&key=a%2Bb"}, "a+b"},
		{"gemini empty ?key=", gemini, headerMap{":path": "/v1beta/models/m:generateContent?key="}, ""},
		{"gemini header wins over ?key=", gemini, headerMap{"x-goog-api-key": "h", ":path": "/x?key=q"}, "h"},
		{"gemini OAuth token", gemini, headerMap{"authorization": "Bearer ya29.token"}, "ya29.token"},
		{"gemini monkey= is not key=", gemini, headerMap{":path": "/x?monkey=1&keys=2"}, ""},
		{"compatible custom header and scheme", custom, headerMap{"x-llm-key": "Key client-key"}, "client-key"},
		{"compatible custom header, wrong scheme", custom, headerMap{"x-llm-key": "Bearer client-key"}, ""},
		{"compatible custom header ignores authorization", custom, headerMap{"authorization": "Bearer client-key"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.provider.ClientCredential(tt.headers); got != tt.want {
				t.Errorf("ClientCredential = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStripPathCredential(t *testing.T) {
	tests := []struct {
		path, want string
		removed    bool
	}{
		{"/v1beta/models/gemini-2.0-flash:generateContent", "/v1beta/models/gemini-2.0-flash:generateContent", false},
		{"/v1beta/models/m:generateContent?key=abc", "/v1beta/models/m:generateContent", true},
		{"/v1beta/models/m:streamGenerateContent?alt=sse&key=abc", "/v1beta/models/m:streamGenerateContent?alt=sse", true},
		{"/v1beta/models/m:streamGenerateContent?key=abc&alt=sse", "/v1beta/models/m:streamGenerateContent?alt=sse", true},
		{"/x?a=1&key=k1&b=%2F&key=k2", "/x?a=1&b=%2F", true},
		{"/x?%6Bey=encoded-name", "/x", true},
		{"/x?key", "/x", true},
		{"/x?keys=1&monkey=2", "/x?keys=1&monkey=2", false},
		{"/x?", "/x?", false},
		{"?key=only", "/", true},
		{"/x?a=1&&key=k", "/x?a=1", true},
	}
	for _, tt := range tests {
		got, removed := providers.Gemini{}.StripPathCredential(tt.path)
		if got == "" {
			t.Errorf("StripPathCredential(%q) is empty", tt.path)
		}
		if got != tt.want || removed != tt.removed {
			t.Errorf("StripPathCredential(%q) = %q, %v; want %q, %v", tt.path, got, removed, tt.want, tt.removed)
		}
	}
	// Every provider strips it, as every provider strips all credential headers.
	for _, p := range allProviders(t) {
		if got, removed := p.StripPathCredential("/v1/chat/completions?key=abc&x=1"); !removed || got != "/v1/chat/completions?x=1" {
			t.Errorf("%s: StripPathCredential = %q, %v", p.Name(), got, removed)
		}
	}
}

func TestModelFromPath(t *testing.T) {
	tests := []struct {
		name     string
		provider providers.Provider
		path     string
		want     string
	}{
		{"gemini generateContent", providers.Gemini{}, "/v1beta/models/gemini-2.0-flash:generateContent", "gemini-2.0-flash"},
		{"gemini stream with query", providers.Gemini{}, "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=k", "gemini-2.5-pro"},
		{"gemini v1", providers.Gemini{}, "/v1/models/gemini-1.5-flash-002:countTokens", "gemini-1.5-flash-002"},
		{"gemini model info", providers.Gemini{}, "/v1beta/models/embedding-001", "embedding-001"},
		{"gemini listing", providers.Gemini{}, "/v1beta/models", ""},
		{"gemini files", providers.Gemini{}, "/v1beta/files/abc", ""},
		{"gemini model name in the query is not the path's", providers.Gemini{}, "/v1beta/cachedContents?x=/models/m:y", ""},
		{"azure deployment", providers.AzureOpenAI{}, "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21", "gpt-4o-prod"},
		{"azure deployment embeddings", providers.AzureOpenAI{}, "/openai/deployments/embed-3/embeddings", "embed-3"},
		{"azure v1 API names it in the body", providers.AzureOpenAI{}, "/openai/v1/chat/completions", ""},
		{"azure deployments listing", providers.AzureOpenAI{}, "/openai/deployments?api-version=2022-12-01", ""},
		{"openai", providers.OpenAI{}, "/v1/chat/completions", ""},
		{"anthropic", providers.Anthropic{}, "/v1/messages", ""},
		{"compatible", compatible(t, "groq"), "/openai/v1/chat/completions", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.provider.Model(tt.path); got != tt.want {
				t.Errorf("Model(%q) = %q, want %q", tt.path, got, tt.want)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	for _, name := range providers.Names() {
		p, err := providers.Build(providers.Spec{Name: name})
		if err != nil || p.Name() != name {
			t.Errorf("Build(%q) = %v, %v", name, p, err)
		}
	}
	for _, preset := range providers.PresetNames() {
		p, err := providers.Build(providers.Spec{Name: providers.NameOpenAICompatible, Compatible: providers.CompatibleOptions{Preset: preset}})
		if err != nil {
			t.Errorf("preset %q: %v", preset, err)
			continue
		}
		if got := p.(providers.Compatible).Preset().Name; got != preset {
			t.Errorf("preset %q built as %q", preset, got)
		}
		hosted := !slices.Contains([]string{"vllm", "ollama"}, preset)
		up := providers.DefaultUpstream(providers.Spec{Name: providers.NameOpenAICompatible, Compatible: providers.CompatibleOptions{Preset: preset}})
		if hosted != strings.HasPrefix(up, "https://") {
			t.Errorf("preset %q: default upstream %q", preset, up)
		}
	}
	if _, err := providers.Build(providers.Spec{Name: "openai-compatible", Compatible: providers.CompatibleOptions{Preset: "grok"}}); err == nil ||
		!strings.Contains(err.Error(), `unknown preset "grok"`) {
		t.Errorf("unknown preset: err = %v", err)
	}
}

// TestStripPathCredentialAllocatesNothingWithoutAKey: it runs on every request.
func TestStripPathCredentialAllocatesNothingWithoutAKey(t *testing.T) {
	for _, path := range []string{"/v1/chat/completions", "/v1beta/models/m:streamGenerateContent?alt=sse&keys=1&monkey=2"} {
		for _, p := range allProviders(t) {
			if allocs := testing.AllocsPerRun(100, func() { p.StripPathCredential(path) }); allocs != 0 {
				t.Errorf("%s: StripPathCredential(%q) allocates %.0f times", p.Name(), path, allocs)
			}
		}
	}
}
