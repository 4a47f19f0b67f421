package config_test

import (
	"strings"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// readPool reads a configuration with one pool whose block is body (indented under
// "  - name: p").
func readPool(t *testing.T, body string) (*config.Pool, error) {
	t.Helper()
	doc := "pools:\n  - name: p\n    keys: [{id: k1, secret: env:K1}]\n" + body
	c, err := config.Read(strings.NewReader(doc), env(map[string]string{"K1": "test-k1-value"}))
	if err != nil {
		return nil, err
	}
	p, _ := c.Pool("p")
	return p, nil
}

func TestProviderDefaultUpstreams(t *testing.T) {
	tests := []struct {
		name, body   string
		wantUpstream string
		wantAuth     providers.Header
	}{
		{"openai", "    provider: openai\n", "https://api.openai.com", providers.Header{Name: "authorization", Value: "Bearer K"}},
		{"anthropic", "    provider: anthropic\n", "https://api.anthropic.com", providers.Header{Name: "x-api-key", Value: "K"}},
		{"gemini", "    provider: gemini\n", "https://generativelanguage.googleapis.com", providers.Header{Name: "x-goog-api-key", Value: "K"}},
		{"azure from its resource", "    provider: azure-openai\n    azure: {resource: contoso-east}\n",
			"https://contoso-east.openai.azure.com", providers.Header{Name: "api-key", Value: "K"}},
		{"azure with its own endpoint", "    provider: azure-openai\n    route: {upstream: https://contoso.cognitiveservices.azure.com}\n",
			"https://contoso.cognitiveservices.azure.com", providers.Header{Name: "api-key", Value: "K"}},
		{"route upstream wins over the resource", "    provider: azure-openai\n    azure: {resource: contoso}\n    route: {upstream: https://proxy.example.com}\n",
			"https://proxy.example.com", providers.Header{Name: "api-key", Value: "K"}},
		{"groq preset", "    provider: openai-compatible\n    openai_compatible: {preset: groq}\n",
			"https://api.groq.com", providers.Header{Name: "authorization", Value: "Bearer K"}},
		{"openrouter preset", "    provider: openai-compatible\n    openai_compatible: {preset: openrouter}\n",
			"https://openrouter.ai", providers.Header{Name: "authorization", Value: "Bearer K"}},
		{"cerebras preset", "    provider: openai-compatible\n    openai_compatible: {preset: cerebras}\n",
			"https://api.cerebras.ai", providers.Header{Name: "authorization", Value: "Bearer K"}},
		{"vllm with its server", "    provider: openai-compatible\n    openai_compatible: {preset: vllm}\n    route: {upstream: http://vllm:8000}\n",
			"http://vllm:8000", providers.Header{Name: "authorization", Value: "Bearer K"}},
		{"custom header takes the bare key", "    provider: openai-compatible\n    openai_compatible: {auth_header: x-api-key}\n    route: {upstream: https://llm.internal}\n",
			"https://llm.internal", providers.Header{Name: "x-api-key", Value: "K"}},
		{"custom header and scheme", "    provider: openai-compatible\n    openai_compatible: {auth_header: x-auth, auth_scheme: Token}\n    route: {upstream: https://llm.internal}\n",
			"https://llm.internal", providers.Header{Name: "x-auth", Value: "Token K"}},
		{"authorization without a scheme", "    provider: openai-compatible\n    openai_compatible: {auth_scheme: none}\n    route: {upstream: https://llm.internal}\n",
			"https://llm.internal", providers.Header{Name: "authorization", Value: "K"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := readPool(t, tt.body)
			if err != nil {
				t.Fatal(err)
			}
			if p.Route.Upstream != tt.wantUpstream {
				t.Errorf("route.upstream = %q, want %q", p.Route.Upstream, tt.wantUpstream)
			}
			prov, err := providers.Build(p.ProviderSpec())
			if err != nil {
				t.Fatalf("Build(%+v): %v", p.ProviderSpec(), err)
			}
			if got := prov.AuthHeader("K"); got != tt.wantAuth {
				t.Errorf("AuthHeader = %+v, want %+v", got, tt.wantAuth)
			}
		})
	}
}

func TestBadProviderSettingsNameTheField(t *testing.T) {
	tests := []struct {
		name, body string
		want       string
	}{
		{"azure without resource or upstream", "    provider: azure-openai\n",
			"pools[0].azure.resource: required: Azure endpoints are per resource"},
		{"azure resource with a dot", "    provider: azure-openai\n    azure: {resource: contoso.openai}\n",
			`pools[0].azure.resource: "contoso.openai" is not an Azure resource name`},
		{"azure block on an openai pool", "    provider: openai\n    azure: {resource: contoso}\n",
			`pools[0].azure: only an azure-openai pool reads it (provider is "openai")`},
		{"compatible block on a gemini pool", "    provider: gemini\n    openai_compatible: {preset: groq}\n",
			`pools[0].openai_compatible: only an openai-compatible pool reads it`},
		{"unknown preset", "    provider: openai-compatible\n    openai_compatible: {preset: grok}\n",
			`pools[0].openai_compatible.preset: unknown preset "grok" (want one of groq, mistral`},
		{"upper-case auth header", "    provider: openai-compatible\n    openai_compatible: {auth_header: X-Api-Key}\n    route: {upstream: https://x.example}\n",
			`pools[0].openai_compatible: auth header: "X-Api-Key" must be lower case`},
		{"x-envoy auth header", "    provider: openai-compatible\n    openai_compatible: {auth_header: x-envoy-key}\n    route: {upstream: https://x.example}\n",
			`cannot be set by an ext_proc server`},
		{"two-word scheme", "    provider: openai-compatible\n    openai_compatible: {auth_scheme: Bearer Token}\n    route: {upstream: https://x.example}\n",
			`auth scheme "Bearer Token": a scheme is one token`},
		{"self-hosted without upstream", "    provider: openai-compatible\n    openai_compatible: {preset: ollama}\n",
			`pools[0].route.upstream: required: openai-compatible preset "ollama" has no public endpoint`},
		{"generic compatible without upstream", "    provider: openai-compatible\n",
			`pools[0].route.upstream: required: openai-compatible has no public endpoint`},
		{"unknown field in the azure block", "    provider: azure-openai\n    azure: {resource: contoso, region: eastus}\n",
			`field region not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readPool(t, tt.body)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}
