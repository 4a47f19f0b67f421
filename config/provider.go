package config

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/envoy-keypool/envoy-keypool/providers"
)

// ProviderSettings are the settings of a pool that only some providers read. They sit
// in the pool's own block:
//
//   - name: azure
//     provider: azure-openai
//     azure: {resource: contoso}          # upstream https://contoso.openai.azure.com
//   - name: groq
//     provider: openai-compatible
//     openai_compatible: {preset: groq}   # upstream https://api.groq.com, Groq's headers
type ProviderSettings struct {
	// Azure configures an azure-openai pool. Default none.
	Azure *AzureSettings `yaml:"azure"`
	// OpenAICompatible configures an openai-compatible pool. Default: the generic
	// preset with `Authorization: Bearer <key>`.
	OpenAICompatible *CompatibleSettings `yaml:"openai_compatible"`
}

// AzureSettings are an azure-openai pool's settings.
type AzureSettings struct {
	// Resource is the Azure OpenAI resource the pool's keys belong to: its route's
	// upstream defaults to https://{resource}.openai.azure.com (each key of a pool
	// must belong to that resource, as Azure keys are per resource). Required unless
	// route.upstream names the endpoint (a custom domain, or a
	// *.cognitiveservices.azure.com endpoint).
	Resource string `yaml:"resource"`
}

// CompatibleSettings are an openai-compatible pool's settings.
type CompatibleSettings struct {
	// Preset names the API (groq, mistral, deepseek, together, fireworks, openrouter,
	// xai, cerebras, vllm, ollama): its rate-limit headers, its 402 and capacity
	// statuses, and the default route.upstream. Default "" (generic: OpenAI's headers,
	// route.upstream required).
	Preset string `yaml:"preset"`
	// AuthHeader is the request header that carries the key, lower case. Default
	// "authorization".
	AuthHeader string `yaml:"auth_header"`
	// AuthScheme goes before the key ("Bearer" gives `Authorization: Bearer <key>`);
	// "none" sends the bare key. Default "Bearer" with the authorization header, none
	// with any other header.
	AuthScheme string `yaml:"auth_scheme"`
}

// azureResourceName matches an Azure Cognitive Services resource name (its custom
// subdomain): letters, digits and hyphens, not at either end, at most 64.
var azureResourceName = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,62}[a-zA-Z0-9])?$`)

// ProviderSpec is what providers.Build needs to build the pool's provider.
func (p *Pool) ProviderSpec() providers.Spec {
	s := providers.Spec{Name: p.Provider}
	if c := p.OpenAICompatible; c != nil {
		s.Compatible = providers.CompatibleOptions{Preset: c.Preset, AuthHeader: c.AuthHeader, AuthScheme: c.AuthScheme}
	}
	return s
}

// defaultUpstream is the route upstream a pool gets when its route names none; "" when
// its provider has no public endpoint to default to.
func (p *Pool) defaultUpstream() string {
	if p.Provider == providers.NameAzureOpenAI && p.Azure != nil && azureResourceName.MatchString(p.Azure.Resource) {
		return "https://" + p.Azure.Resource + ".openai.azure.com"
	}
	return providers.DefaultUpstream(p.ProviderSpec())
}

// validateProvider checks provider and the settings that go with it.
func (p *Pool) validateProvider(path string) []error {
	var errs []error
	add := func(field string, err error) { errs = append(errs, fieldError(path+field, err)) }
	if p.Azure != nil && p.Provider != providers.NameAzureOpenAI {
		add(".azure", fmt.Errorf("only an %s pool reads it (provider is %q)", providers.NameAzureOpenAI, p.Provider))
	}
	if p.OpenAICompatible != nil && p.Provider != providers.NameOpenAICompatible {
		add(".openai_compatible", fmt.Errorf("only an %s pool reads it (provider is %q)", providers.NameOpenAICompatible, p.Provider))
	}
	if p.Azure != nil && p.Azure.Resource != "" && !azureResourceName.MatchString(p.Azure.Resource) {
		add(".azure.resource", fmt.Errorf("%q is not an Azure resource name (letters, digits and inner hyphens, at most 64)", p.Azure.Resource))
	}
	_, err := providers.Build(p.ProviderSpec())
	switch {
	case err == nil:
	case p.Provider != providers.NameOpenAICompatible:
		add(".provider", err)
	case errors.Is(err, providers.ErrUnknownPreset):
		add(".openai_compatible.preset", err)
	default:
		add(".openai_compatible", err)
	}
	if p.Route.Upstream == "" && err == nil {
		switch p.Provider {
		case providers.NameAzureOpenAI:
			add(".azure.resource", errors.New("required: Azure endpoints are per resource (or set route.upstream)"))
		default:
			add(".route.upstream", fmt.Errorf("required: %s has no public endpoint to default to (the server's scheme://host[:port])",
				describeProvider(p)))
		}
	}
	return errs
}

// describeProvider names a pool's provider and preset for messages.
func describeProvider(p *Pool) string {
	if p.OpenAICompatible != nil && p.OpenAICompatible.Preset != "" {
		return fmt.Sprintf("%s preset %q", p.Provider, p.OpenAICompatible.Preset)
	}
	return p.Provider
}
