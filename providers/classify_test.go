package providers_test

import (
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

var testNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// none is the class of an answer that is no key failure.
const none keypool.Class = ""

// unknown is the hint of an answer that asked for no particular wait.
const unknown time.Duration = -1

func compatible(t testing.TB, preset string) providers.Provider {
	t.Helper()
	p, err := providers.Build(providers.Spec{Name: providers.NameOpenAICompatible,
		Compatible: providers.CompatibleOptions{Preset: preset}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// classifyCase is one provider answer and what it means for the key that got it.
type classifyCase struct {
	name     string
	provider providers.Provider
	status   int
	headers  headerMap
	body     string
	// want is the class with the body; wantHint the wait it asks for (unknown: none).
	want     keypool.Class
	wantHint time.Duration
	// headerOnly is the class without the body (what envoy-keypool decides when Envoy
	// did not buffer it).
	headerOnly keypool.Class
	// cooldown is how long the key cools under the default policy (zero: not marked).
	cooldown time.Duration
}

func classifyCases(t testing.TB) []classifyCase {
	groq, openRouter, deepSeek := compatible(t, "groq"), compatible(t, "openrouter"), compatible(t, "deepseek")
	cerebras, together, vllm := compatible(t, "cerebras"), compatible(t, "together"), compatible(t, "vllm")
	openai, anthropic, gemini, azure := providers.OpenAI{}, providers.Anthropic{}, providers.Gemini{}, providers.AzureOpenAI{}
	rfc := func(d time.Duration) string { return testNow.Add(d).Format(time.RFC3339) }
	return []classifyCase{
		// OpenAI
		{"openai 200 is no failure", openai, 200, headerMap{"x-ratelimit-remaining-requests": "0"}, "", none, unknown, none, 0},
		{"openai tokens per minute, reset headers", openai, 429,
			headerMap{"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.82s", "x-ratelimit-remaining-requests": "499", "x-ratelimit-reset-requests": "120ms"},
			openAIRateLimitTPM, keypool.ClassRateLimited, 1820 * time.Millisecond, keypool.ClassRateLimited, 1820 * time.Millisecond},
		{"openai requests per minute, wait from the message only", openai, 429, headerMap{},
			openAIRateLimitRPM, keypool.ClassRateLimited, 120 * time.Millisecond, keypool.ClassRateLimitUnconfirmed, time.Second},
		{"openai retry-after wins over the message", openai, 429, headerMap{"retry-after": "3"},
			openAIRateLimitRPM, keypool.ClassRateLimited, 3 * time.Second, keypool.ClassRateLimited, 3 * time.Second},
		{"openai request too large is the request's", openai, 429,
			headerMap{"x-ratelimit-remaining-tokens": "30000", "x-ratelimit-reset-tokens": "0s"},
			openAITooLarge, keypool.ClassRequestTooLarge, unknown, keypool.ClassRateLimitUnconfirmed, 0},
		{"openai insufficient_quota", openai, 429, headerMap{"x-ratelimit-reset-requests": "6m0s"},
			openAIQuota, keypool.ClassQuota, unknown, keypool.ClassRateLimitUnconfirmed, time.Hour},
		{"openai invalid key", openai, 401, headerMap{}, openAIInvalidKey, keypool.ClassUnauthorized, unknown, keypool.ClassUnauthorized, time.Hour},
		{"openai deactivated account", openai, 401, headerMap{}, openAIDeactivated, keypool.ClassUnauthorized, unknown, keypool.ClassUnauthorized, time.Hour},
		{"openai region is not the key's", openai, 403, headerMap{}, openAIRegion, none, unknown, keypool.ClassForbidden, 0},
		{"openai model access is corroborated", openai, 403, headerMap{}, openAIModelAccess, keypool.ClassForbidden, unknown, keypool.ClassForbidden, 0},
		{"openai 503 overloaded", openai, 503, headerMap{}, openAIOverloaded, keypool.ClassOverloaded, unknown, keypool.ClassOverloaded, 0},
		{"openai 400 is the request's", openai, 400, headerMap{}, openAIBadRequest, none, unknown, none, 0},
		{"openai 404 is the request's", openai, 404, headerMap{}, "", none, unknown, none, 0},

		// Anthropic
		{"anthropic rate limit with retry-after", anthropic, 429,
			headerMap{"retry-after": "17", "anthropic-ratelimit-input-tokens-remaining": "0", "anthropic-ratelimit-input-tokens-reset": rfc(20 * time.Second)},
			anthropicRateLimit, keypool.ClassRateLimited, 17 * time.Second, keypool.ClassRateLimited, 17 * time.Second},
		{"anthropic rate limit from its reset headers", anthropic, 429,
			headerMap{"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": rfc(42 * time.Second)},
			anthropicRateLimit, keypool.ClassRateLimited, 42 * time.Second, keypool.ClassRateLimited, 42 * time.Second},
		{"anthropic bare 429 is confirmed by its body", anthropic, 429, headerMap{},
			anthropicRateLimit, keypool.ClassRateLimited, unknown, keypool.ClassRateLimitUnconfirmed, 30 * time.Second},
		{"anthropic credit balance too low", anthropic, 400, headerMap{}, anthropicCredit, keypool.ClassQuota, unknown, none, time.Hour},
		{"anthropic billing_error", anthropic, 402, headerMap{}, anthropicBilling, keypool.ClassQuota, unknown, keypool.ClassQuota, time.Hour},
		{"anthropic other 400 is the request's", anthropic, 400, headerMap{}, anthropicBadReq, none, unknown, none, 0},
		{"anthropic authentication_error", anthropic, 401, headerMap{}, anthropicAuth, keypool.ClassUnauthorized, unknown, keypool.ClassUnauthorized, time.Hour},
		{"anthropic permission_error", anthropic, 403, headerMap{}, anthropicPerm, keypool.ClassForbidden, unknown, keypool.ClassForbidden, 0},
		{"anthropic request_too_large", anthropic, 413, headerMap{}, anthropicTooLarge, keypool.ClassRequestTooLarge, unknown, keypool.ClassRequestTooLarge, 0},
		{"anthropic 529 overloaded", anthropic, 529, headerMap{}, anthropicOverload, keypool.ClassOverloaded, unknown, keypool.ClassOverloaded, 0},

		// Gemini
		{"gemini bad key is a 400", gemini, 400, headerMap{}, geminiBadKey, keypool.ClassUnauthorized, unknown, none, time.Hour},
		{"gemini other 400 is the request's", gemini, 400, headerMap{}, geminiBadRequest, none, unknown, none, 0},
		{"gemini unsupported location is not the key's", gemini, 400, headerMap{}, geminiLocation, none, unknown, none, 0},
		{"gemini per-minute quota waits its retryDelay", gemini, 429, headerMap{}, geminiPerMinute,
			keypool.ClassRateLimited, 52 * time.Second, keypool.ClassRateLimitUnconfirmed, 52 * time.Second},
		{"gemini per-day quota waits until midnight Pacific", gemini, 429, headerMap{}, geminiPerDay,
			keypool.ClassRateLimited, 20 * time.Hour, keypool.ClassRateLimitUnconfirmed, time.Hour},
		{"gemini bare RESOURCE_EXHAUSTED is unconfirmed", gemini, 429, headerMap{}, geminiExhausted,
			keypool.ClassRateLimitUnconfirmed, unknown, keypool.ClassRateLimitUnconfirmed, 0},
		{"gemini: a spent daily quota among others waits until midnight", gemini, 429, headerMap{}, geminiManyQuotas,
			keypool.ClassRateLimited, 20 * time.Hour, keypool.ClassRateLimitUnconfirmed, time.Hour},
		{"gemini: a 429 naming no quota is unconfirmed", gemini, 429, headerMap{}, geminiHelpOnly,
			keypool.ClassRateLimitUnconfirmed, unknown, keypool.ClassRateLimitUnconfirmed, 0},
		{"gemini leaked key", gemini, 403, headerMap{}, geminiLeaked, keypool.ClassUnauthorized, unknown, keypool.ClassForbidden, time.Hour},
		{"gemini API disabled on the key's project", gemini, 403, headerMap{}, geminiDisabled, keypool.ClassUnauthorized, unknown, keypool.ClassForbidden, time.Hour},
		{"gemini permission denied", gemini, 403, headerMap{}, geminiDenied, keypool.ClassForbidden, unknown, keypool.ClassForbidden, 0},
		{"gemini 503 unavailable", gemini, 503, headerMap{}, geminiUnavailable, keypool.ClassOverloaded, unknown, keypool.ClassOverloaded, 0},

		// Azure OpenAI
		{"azure token rate limit with retry-after-ms", azure, 429,
			headerMap{"retry-after-ms": "5500", "retry-after": "6", "x-ratelimit-remaining-tokens": "0"},
			azureRateLimit, keypool.ClassRateLimited, 5500 * time.Millisecond, keypool.ClassRateLimited, 5500 * time.Millisecond},
		{"azure x-ms-retry-after-ms", azure, 429, headerMap{"x-ms-retry-after-ms": "2000"},
			azureRateLimit, keypool.ClassRateLimited, 2 * time.Second, keypool.ClassRateLimited, 2 * time.Second},
		{"azure wait from the message only", azure, 429, headerMap{},
			azureRateLimit, keypool.ClassRateLimited, 6 * time.Second, keypool.ClassRateLimitUnconfirmed, 6 * time.Second},
		{"azure call rate limit without a wait", azure, 429, headerMap{},
			azureCallLimit, keypool.ClassRateLimited, unknown, keypool.ClassRateLimitUnconfirmed, 30 * time.Second},
		{"azure quota", azure, 429, headerMap{}, azureQuota, keypool.ClassQuota, unknown, keypool.ClassRateLimitUnconfirmed, time.Hour},
		{"azure invalid key", azure, 401, headerMap{}, azureBadKey, keypool.ClassUnauthorized, unknown, keypool.ClassUnauthorized, time.Hour},
		{"azure private endpoint only", azure, 403, headerMap{}, azurePrivate, keypool.ClassForbidden, unknown, keypool.ClassForbidden, 0},
		{"azure missing deployment is the request's", azure, 404, headerMap{}, azureNoDeploy, none, unknown, none, 0},
		{"azure content filter is the request's", azure, 400, headerMap{}, azureFilter, none, unknown, none, 0},

		// The openai-compatible family
		{"groq rate limit", groq, 429, headerMap{"retry-after": "7", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7.66s"},
			groqRateLimit, keypool.ClassRateLimited, 7 * time.Second, keypool.ClassRateLimited, 7 * time.Second},
		{"groq reset header as a duration", groq, 429, headerMap{"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2m59.56s"},
			"", keypool.ClassRateLimited, 2*time.Minute + 59560*time.Millisecond, keypool.ClassRateLimited, 2*time.Minute + 59560*time.Millisecond},
		{"groq 498 flex capacity is overload", groq, 498, headerMap{}, "", keypool.ClassOverloaded, unknown, keypool.ClassOverloaded, 0},
		{"openrouter insufficient credits", openRouter, 402, headerMap{}, openRouterNoCredit, keypool.ClassQuota, unknown, keypool.ClassQuota, time.Hour},
		{"openrouter rate limit with its reset in the body", openRouter, 429, headerMap{},
			openRouterLimited, keypool.ClassRateLimited, 30 * time.Second, keypool.ClassRateLimitUnconfirmed, 30 * time.Second},
		{"deepseek insufficient balance", deepSeek, 402, headerMap{}, deepSeekBalance, keypool.ClassQuota, unknown, keypool.ClassQuota, time.Hour},
		{"deepseek bare 429", deepSeek, 429, headerMap{}, "", keypool.ClassRateLimitUnconfirmed, unknown, keypool.ClassRateLimitUnconfirmed, 0},
		{"cerebras token limit from its seconds reset", cerebras, 429,
			headerMap{"x-ratelimit-remaining-tokens-minute": "0", "x-ratelimit-reset-tokens-minute": "11.382867097854614",
				"x-ratelimit-remaining-requests-day": "14399", "x-ratelimit-reset-requests-day": "33011.382867097855"},
			cerebrasTokens, keypool.ClassRateLimited, 11382867098 * time.Nanosecond, keypool.ClassRateLimited, 11382867098 * time.Nanosecond},
		{"together dynamic limit", together, 429, headerMap{"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"},
			togetherLimited, keypool.ClassRateLimited, time.Second, keypool.ClassRateLimited, time.Second},
		{"together 503 is platform capacity", together, 503, headerMap{}, "", keypool.ClassOverloaded, unknown, keypool.ClassOverloaded, 0},
		{"vllm 401 with a string error", vllm, 401, headerMap{}, vllmUnauthorized, keypool.ClassUnauthorized, unknown, keypool.ClassUnauthorized, time.Hour},
	}
}

// defaultActions are the domain's defaults (keypool.DefaultActions on the domain
// branch); the cooldown column is what they give.
func defaultAction(c keypool.Class) keypool.Action {
	switch c {
	case keypool.ClassRateLimited, keypool.ClassQuota, keypool.ClassUnauthorized:
		return keypool.ActionCool
	case keypool.ClassRateLimitUnconfirmed, keypool.ClassForbidden:
		return keypool.ActionCorroborate
	case keypool.ClassRequestTooLarge:
		return keypool.ActionFailover
	}
	return keypool.ActionPass
}

func TestClassify(t *testing.T) {
	for _, tt := range classifyCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			f, ok := tt.provider.Classify(tt.status, tt.headers, []byte(tt.body), testNow)
			if got := classOf(f, ok); got != tt.want {
				t.Fatalf("class = %q, want %q", got, tt.want)
			}
			if ok && f.Status != tt.status {
				t.Errorf("failure status = %d, want %d", f.Status, tt.status)
			}
			if got := hintOf(f); got != tt.wantHint {
				t.Errorf("hint = %s, want %s", got, tt.wantHint)
			}

			// What the headers alone can tell.
			hf, hok := tt.provider.Classify(tt.status, tt.headers, nil, testNow)
			if got := classOf(hf, hok); got != tt.headerOnly {
				t.Errorf("header-only class = %q, want %q", got, tt.headerOnly)
			}
			if hok != ok || classOf(hf, hok) != tt.want {
				if !tt.provider.WantsBody(tt.status, tt.headers) {
					t.Errorf("the body changes the class (%q → %q) but WantsBody(%d) is false", tt.headerOnly, tt.want, tt.status)
				}
			}

			// What the default policy does with it.
			var cooldown time.Duration
			if ok && defaultAction(f.Class) == keypool.ActionCool {
				cooldown = keypool.DefaultPolicy().Duration(f.Class.Reason(), f.Hint)
			}
			if cooldown != tt.cooldown {
				t.Errorf("cooldown under the default policy = %s (action %s), want %s", cooldown, defaultAction(f.Class), tt.cooldown)
			}
		})
	}
}

func classOf(f keypool.Failure, ok bool) keypool.Class {
	if !ok {
		return none
	}
	return f.Class
}

func hintOf(f keypool.Failure) time.Duration {
	if !f.Hint.Known {
		return unknown
	}
	return f.Hint.After
}

// TestBadBodiesFallBackToTheHeaderClass: a body that is not JSON, is truncated, too
// large or of another shape decides nothing.
func TestBadBodiesFallBackToTheHeaderClass(t *testing.T) {
	huge := `{"error":{"code":"insufficient_quota","message":"` + strings.Repeat("x", providers.MaxErrorBody) + `"}}`
	bodies := map[string]string{
		"not JSON":        "<html><body>502 Bad Gateway</body></html>",
		"truncated":       openAIQuota[:40],
		"larger than cap": huge,
		"other shape":     `{"detail":"Not Found"}`,
		"JSON array":      `[1,2,3]`,
		"error is a list": `{"error":[{"code":"insufficient_quota"}]}`,
		"null":            `null`,
		"empty":           "",
	}
	for _, tt := range classifyCases(t) {
		for name, body := range bodies {
			f, ok := tt.provider.Classify(tt.status, tt.headers, []byte(body), testNow)
			want, wantOK := tt.provider.Classify(tt.status, tt.headers, nil, testNow)
			if ok != wantOK || f != want {
				t.Errorf("%s, %s body: %+v %v; want the header-only %+v %v", tt.name, name, f, ok, want, wantOK)
			}
		}
	}
}

func TestWantsBodyOnlyForFailures(t *testing.T) {
	for _, p := range allProviders(t) {
		for _, status := range []int{200, 201, 204, 301, 304, 404, 500, 503, 529} {
			if p.WantsBody(status, headerMap{}) {
				t.Errorf("%s: WantsBody(%d) is true: a body that cannot change the class must never be buffered", p.Name(), status)
			}
		}
	}
}

func allProviders(t testing.TB) []providers.Provider {
	ps := []providers.Provider{providers.OpenAI{}, providers.Anthropic{}, providers.Gemini{}, providers.AzureOpenAI{}}
	for _, name := range append([]string{""}, providers.PresetNames()...) {
		ps = append(ps, compatible(t, name))
	}
	return ps
}
