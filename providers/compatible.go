package providers

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Compatible is an API that speaks OpenAI's protocol, auth and error format (Groq,
// Mistral, DeepSeek, Together, Fireworks, OpenRouter, xAI, Cerebras, self-hosted vLLM
// or Ollama, …). Its auth header name and scheme are configurable; a preset sets the
// rate-limit headers, the default upstream and the statuses that differ from OpenAI's.
// Build it with NewCompatible.
//
// Classification is OpenAI's, plus 402 (an empty credit balance at OpenRouter and
// DeepSeek, a payment required at Mistral) as quota of the key.
type Compatible struct {
	preset     Preset
	limits     []limit // the preset's request and token limits
	authHeader string
	authScheme string
}

// CompatibleOptions configures an openai-compatible provider.
type CompatibleOptions struct {
	// Preset names one of PresetNames: its rate-limit headers and default upstream. Default
	// "" (generic: OpenAI's x-ratelimit-* headers, no default upstream).
	Preset string
	// AuthHeader is the request header that carries the key, lower case. Default
	// "authorization".
	AuthHeader string
	// AuthScheme goes before the key, separated by a space ("Bearer" gives
	// "Authorization: Bearer <key>"); "none" sends the bare key. Default "Bearer" for
	// the authorization header, none for any other header (`x-api-key: <key>`).
	AuthScheme string
}

// Preset is what differs between the APIs of the openai-compatible family.
type Preset struct {
	// Name is the preset's name in configuration.
	Name string
	// Upstream is the API's base URL (scheme and host); "" for self-hosted servers.
	Upstream string
	// BasePath is the path before /chat/completions that clients put in their base
	// URL after the pool's route prefix (documentation: requests are passed on as
	// they come).
	BasePath string
	// Docs says where the headers were checked.
	Docs string

	requests, tokens []limit
	overloaded       []int // statuses of this API's own capacity errors, beyond 5xx
}

// presets are the known members of the family, each checked against the API's public
// documentation (Docs). Read-only.
var presets = []Preset{
	{Name: "", BasePath: "/v1", Docs: "OpenAI's headers",
		requests: openAILimits[:1], tokens: openAILimits[1:]},
	{Name: "groq", Upstream: "https://api.groq.com", BasePath: "/openai/v1",
		Docs:     "console.groq.com/docs/rate-limits: x-ratelimit-{limit,remaining,reset}-{requests,tokens}, resets as durations (\"2m59.56s\"), retry-after on 429; 498 flex capacity",
		requests: openAILimits[:1], tokens: openAILimits[1:], overloaded: []int{498}},
	{Name: "mistral", Upstream: "https://api.mistral.ai", BasePath: "/v1",
		Docs:     "limits per workspace; headers as OpenAI names them where sent (not listed in Mistral's own pages: read only when present), Retry-After on 429; 402 payment required",
		requests: openAILimits[:1], tokens: openAILimits[1:]},
	{Name: "deepseek", Upstream: "https://api.deepseek.com", BasePath: "/v1",
		Docs: "api-docs.deepseek.com/quick_start/error_codes: 402 Insufficient Balance, 429 Rate Limit Reached, 503 overloaded; no rate-limit headers"},
	{Name: "together", Upstream: "https://api.together.xyz", BasePath: "/v1",
		Docs:     "docs.together.ai/docs/rate-limits: x-ratelimit-{limit,remaining,reset} (requests per second, reset in seconds), x-tokenlimit-{limit,remaining}; 429 dynamic_*_limited; 503 for platform capacity",
		requests: []limit{{remaining: "x-ratelimit-remaining", reset: "x-ratelimit-reset", format: resetSeconds}},
		tokens:   []limit{{remaining: "x-tokenlimit-remaining"}}},
	{Name: "fireworks", Upstream: "https://api.fireworks.ai", BasePath: "/inference/v1",
		Docs:     "OpenAI-compatible headers x-ratelimit-{remaining,reset}-{requests,tokens} where sent; Retry-After on 429",
		requests: openAILimits[:1], tokens: openAILimits[1:]},
	{Name: "openrouter", Upstream: "https://openrouter.ai", BasePath: "/api/v1",
		Docs: "openrouter.ai/docs/errors: {\"error\":{\"code\":<status>,\"message\",\"metadata\"}}, 402 insufficient credits of the account or key, 429 rate limited, 502/503 upstream model down"},
	{Name: "xai", Upstream: "https://api.x.ai", BasePath: "/v1",
		Docs:     "docs.x.ai/developers/rate-limits: per-model requests per second and tokens per minute, 429 past either; OpenAI-compatible headers where sent",
		requests: openAILimits[:1], tokens: openAILimits[1:]},
	{Name: "cerebras", Upstream: "https://api.cerebras.ai", BasePath: "/v1",
		Docs: "inference-docs.cerebras.ai/support/rate-limits: x-ratelimit-{limit,remaining,reset}-requests-day and -tokens-minute, resets in seconds (\"33011.38\")",
		requests: []limit{
			{remaining: "x-ratelimit-remaining-requests-minute", reset: "x-ratelimit-reset-requests-minute", format: resetSeconds},
			{remaining: "x-ratelimit-remaining-requests-hour", reset: "x-ratelimit-reset-requests-hour", format: resetSeconds},
			{remaining: "x-ratelimit-remaining-requests-day", reset: "x-ratelimit-reset-requests-day", format: resetSeconds},
		},
		tokens: []limit{
			{remaining: "x-ratelimit-remaining-tokens-minute", reset: "x-ratelimit-reset-tokens-minute", format: resetSeconds},
			{remaining: "x-ratelimit-remaining-tokens-hour", reset: "x-ratelimit-reset-tokens-hour", format: resetSeconds},
			{remaining: "x-ratelimit-remaining-tokens-day", reset: "x-ratelimit-reset-tokens-day", format: resetSeconds},
		}},
	{Name: "vllm", BasePath: "/v1",
		Docs: "vLLM's OpenAI-compatible server: Bearer auth with --api-key, no rate-limit headers"},
	{Name: "ollama", BasePath: "/v1",
		Docs: "Ollama's OpenAI-compatible endpoint: ignores auth, no rate-limit headers"},
}

// PresetNames lists the names a pool's preset may take.
func PresetNames() []string {
	names := make([]string, 0, len(presets))
	for _, p := range presets[1:] {
		names = append(names, p.Name)
	}
	return names
}

// ErrUnknownPreset is wrapped by NewCompatible's error for a preset it does not know.
var ErrUnknownPreset = errors.New("unknown preset")

// NewCompatible returns the openai-compatible provider opts describe.
func NewCompatible(opts CompatibleOptions) (Compatible, error) {
	i := slices.IndexFunc(presets, func(p Preset) bool { return p.Name == opts.Preset })
	if i < 0 {
		return Compatible{}, fmt.Errorf("%w %q (want one of %s)", ErrUnknownPreset, opts.Preset, strings.Join(PresetNames(), ", "))
	}
	p := presets[i]
	c := Compatible{preset: p, limits: slices.Concat(p.requests, p.tokens), authHeader: opts.AuthHeader, authScheme: opts.AuthScheme}
	if c.authHeader == "" {
		c.authHeader = "authorization"
	}
	if err := validHeaderName(c.authHeader); err != nil {
		return Compatible{}, fmt.Errorf("auth header: %w", err)
	}
	switch {
	case c.authScheme == "none":
		c.authScheme = ""
	case c.authScheme == "" && c.authHeader == "authorization":
		c.authScheme = "Bearer"
	case strings.ContainsAny(c.authScheme, " \t\r\n"):
		return Compatible{}, fmt.Errorf("auth scheme %q: a scheme is one token", c.authScheme)
	}
	return c, nil
}

// validHeaderName accepts a lower-case header name that Envoy's default ext_proc
// mutation rules let envoy-keypool set (mutation_utils.cc refuses host, :-pseudo
// headers and x-envoy-*).
func validHeaderName(name string) error {
	if name != strings.ToLower(name) {
		return fmt.Errorf("%q must be lower case", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("%q is not a header name", name)
		}
	}
	switch {
	case name == "host", strings.HasPrefix(name, "x-envoy-"):
		return fmt.Errorf("%q cannot be set by an ext_proc server under Envoy's default mutation rules", name)
	}
	return nil
}

// Name implements Provider.
func (Compatible) Name() string { return NameOpenAICompatible }

// Preset is the provider's preset.
func (c Compatible) Preset() Preset { return c.preset }

// AuthHeader implements Provider.
func (c Compatible) AuthHeader(key string) Header {
	if c.authScheme == "" {
		return Header{Name: c.authHeader, Value: key}
	}
	return Header{Name: c.authHeader, Value: c.authScheme + " " + key}
}

// ClientCredential implements Provider: the configured header, with its scheme.
func (c Compatible) ClientCredential(h Headers) string {
	return schemeToken(h.Get(c.authHeader), c.authScheme)
}

// Classify implements Provider.
func (c Compatible) Classify(status int, h Headers, body []byte, now time.Time) (keypool.Failure, bool) {
	switch {
	case status == 402:
		return failure(keypool.ClassQuota, status, retryHeaderHint(h, now))
	case slices.Contains(c.preset.overloaded, status):
		return failure(keypool.ClassOverloaded, status, keypool.Hint{})
	}
	return classifyOpenAIFormat(status, h, body, now, c.limits)
}

// WantsBody implements Provider: as OpenAI's.
func (Compatible) WantsBody(status int, _ Headers) bool { return status == 429 || status == 403 }

// Headroom implements Provider: the tightest request limit and the tightest token
// limit the preset names.
func (c Compatible) Headroom(h Headers, now time.Time) keypool.Headroom {
	return keypool.Headroom{
		Requests: tightestOf(h, now, c.preset.requests),
		Tokens:   tightestOf(h, now, c.preset.tokens),
	}
}

// tightestOf reads limits and returns the one with the least left.
func tightestOf(h Headers, now time.Time, limits []limit) keypool.Remaining {
	var out keypool.Remaining
	for _, l := range limits {
		out = tightest(out, readRemaining(h, now, l))
	}
	return out
}

// Model implements Provider: the family names the model in the body.
func (Compatible) Model(string) string { return "" }

// StripPathCredential implements Provider: see stripKeyParam.
func (Compatible) StripPathCredential(path string) (string, bool) { return stripKeyParam(path) }

// ErrorResponse implements Provider, in OpenAI's format.
func (Compatible) ErrorResponse(e ErrorInfo) Response { return openAIErrorResponse(e) }

// DefaultUpstream is the base URL a pool of the provider s describes reaches when its
// route names none; "" when there is no public one (self-hosted servers, Azure, whose
// host is per resource).
func DefaultUpstream(s Spec) string {
	switch s.Name {
	case NameOpenAI:
		return "https://api.openai.com"
	case NameAnthropic:
		return "https://api.anthropic.com"
	case NameGemini:
		return "https://generativelanguage.googleapis.com"
	case NameOpenAICompatible:
		i := slices.IndexFunc(presets, func(p Preset) bool { return p.Name == s.Compatible.Preset })
		if i >= 0 {
			return presets[i].Upstream
		}
	}
	return ""
}
