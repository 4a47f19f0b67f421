package providers

import (
	"net/http"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// headerMap is a Headers backed by a map with lower-case names.
type headerMap map[string]string

func (h headerMap) Get(name string) string { return h[name] }

var testNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// hintOf is the hint a 429 with headers h carries.
func hintOf(p Provider, h Headers) keypool.Hint {
	f, _ := p.Classify(429, h, nil, testNow)
	return f.Hint
}

func TestRetryHint(t *testing.T) {
	tests := []struct {
		name      string
		provider  Provider
		headers   headerMap
		wantAfter time.Duration
		wantKnown bool
	}{
		{"no headers", OpenAI{}, headerMap{}, 0, false},
		{"retry-after-ms", OpenAI{}, headerMap{"retry-after-ms": "1500"}, 1500 * time.Millisecond, true},
		{"retry-after-ms fractional rounds up", OpenAI{}, headerMap{"retry-after-ms": "20.2"}, 20200 * time.Microsecond, true},
		{"retry-after-ms wins over retry-after", OpenAI{}, headerMap{"retry-after-ms": "250", "retry-after": "9"}, 250 * time.Millisecond, true},
		{"retry-after seconds", Anthropic{}, headerMap{"retry-after": "17"}, 17 * time.Second, true},
		{"retry-after zero", Anthropic{}, headerMap{"retry-after": "0"}, 0, true},
		{"retry-after HTTP-date in the future", OpenAI{},
			headerMap{"retry-after": testNow.Add(90 * time.Second).Format(http.TimeFormat)}, 90 * time.Second, true},
		{"retry-after HTTP-date in the past means now", OpenAI{},
			headerMap{"retry-after": testNow.Add(-time.Hour).Format(http.TimeFormat)}, 0, true},
		{"retry-after garbage falls through to reset headers", OpenAI{},
			headerMap{"retry-after": "soon", "x-ratelimit-reset-requests": "2s"}, 2 * time.Second, true},
		{"negative retry-after-ms falls through", OpenAI{}, headerMap{"retry-after-ms": "-10", "retry-after": "3"}, 3 * time.Second, true},
		{"negative retry-after is unknown", OpenAI{}, headerMap{"retry-after": "-3"}, 0, false},
		{"NaN retry-after-ms is unknown", OpenAI{}, headerMap{"retry-after-ms": "NaN"}, 0, false},
		{"garbage everywhere is unknown", Anthropic{}, headerMap{"retry-after-ms": "x", "retry-after": "y",
			"anthropic-ratelimit-requests-reset": "tomorrow"}, 0, false},
		{"huge retry-after is bounded", OpenAI{}, headerMap{"retry-after": "1e300"}, maxHint, true},
		{"openai reset 6m0s", OpenAI{}, headerMap{"x-ratelimit-reset-tokens": "6m0s"}, 6 * time.Minute, true},
		{"openai reset 232ms", OpenAI{}, headerMap{"x-ratelimit-reset-requests": "232ms"}, 232 * time.Millisecond, true},
		{"openai negative reset is unknown", OpenAI{}, headerMap{"x-ratelimit-reset-requests": "-1s"}, 0, false},
		{"openai: the exhausted limit's reset wins", OpenAI{}, headerMap{
			"x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-requests": "0",
			"x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-remaining-tokens": "5000",
		}, time.Second, true},
		{"openai: no limit at zero, the latest reset wins", OpenAI{}, headerMap{
			"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s",
		}, 6 * time.Minute, true},
		{"anthropic reset RFC 3339", Anthropic{}, headerMap{
			"anthropic-ratelimit-requests-reset": testNow.Add(42 * time.Second).Format(time.RFC3339),
		}, 42 * time.Second, true},
		{"anthropic reset in the past means now", Anthropic{}, headerMap{
			"anthropic-ratelimit-tokens-reset": testNow.Add(-42 * time.Second).Format(time.RFC3339),
		}, 0, true},
		{"anthropic: the exhausted limit's reset wins", Anthropic{}, headerMap{
			"anthropic-ratelimit-requests-reset":          testNow.Add(time.Minute).Format(time.RFC3339),
			"anthropic-ratelimit-requests-remaining":      "12",
			"anthropic-ratelimit-output-tokens-reset":     testNow.Add(5 * time.Second).Format(time.RFC3339),
			"anthropic-ratelimit-output-tokens-remaining": "0",
			"anthropic-ratelimit-input-tokens-reset":      "garbage",
			"anthropic-ratelimit-input-tokens-remaining":  "0",
		}, 5 * time.Second, true},
		{"anthropic ignores openai's format", Anthropic{}, headerMap{"x-ratelimit-reset-tokens": "6m0s"}, 0, false},
		{"openai ignores anthropic's format", OpenAI{}, headerMap{
			"anthropic-ratelimit-requests-reset": testNow.Add(time.Minute).Format(time.RFC3339),
		}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := hintOf(tt.provider, tt.headers)
			if got.Known != tt.wantKnown || (got.Known && got.After != tt.wantAfter) {
				t.Errorf("RetryHint = %+v, want after %s known %v", got, tt.wantAfter, tt.wantKnown)
			}
		})
	}
}

func FuzzRetryHint(f *testing.F) {
	f.Add("1500", "17", "6m0s", "2026-11-25T12:00:42Z")
	f.Add("", "Wed, 25 Nov 2026 12:01:30 GMT", "232ms", "")
	f.Add("-1", "-1", "-1s", "garbage")
	f.Add("1e400", "9999999999999999999999", "9999999999h", "9999-12-31T23:59:59Z")
	f.Add("NaN", "Inf", "1h2m3.5s", "0001-01-01T00:00:00Z")
	f.Fuzz(func(t *testing.T, ms, ra, reset, rfc string) {
		h := headerMap{
			"retry-after-ms": ms, "retry-after": ra,
			"x-ratelimit-reset-requests": reset, "x-ratelimit-remaining-requests": "0",
			"anthropic-ratelimit-requests-reset": rfc,
		}
		for _, p := range []Provider{OpenAI{}, Anthropic{}} {
			hint := hintOf(p, h)
			if hint.Known && (hint.After < 0 || hint.After > maxHint) {
				t.Fatalf("%s: hint %s outside [0, %s]", p.Name(), hint.After, maxHint)
			}
			if !hint.Known && hint.After != 0 {
				t.Fatalf("%s: unknown hint carries %s", p.Name(), hint.After)
			}
		}
	})
}
