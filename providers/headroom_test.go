package providers_test

import (
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// headerList is a Headers that scans a list, as extproc's view of Envoy's header map
// does: a realistic cost for a lookup.
type headerList [][2]string

func (h headerList) Get(name string) string {
	for _, kv := range h {
		if kv[0] == name {
			return kv[1]
		}
	}
	return ""
}

// commonResponseHeaders are what a provider's 200 carries besides its rate limits.
var commonResponseHeaders = headerList{
	{":status", "200"}, {"date", "Wed, 25 Nov 2026 12:00:00 GMT"}, {"content-type", "application/json"},
	{"transfer-encoding", "chunked"}, {"connection", "keep-alive"}, {"x-request-id", "req_abc123"},
	{"openai-processing-ms", "512"}, {"strict-transport-security", "max-age=31536000"},
	{"cf-cache-status", "DYNAMIC"}, {"server", "cloudflare"}, {"alt-svc", `h3=":443"; ma=86400`},
}

func with(extra ...[2]string) headerList {
	return append(append(headerList{}, commonResponseHeaders...), extra...)
}

func remaining(left int64, reset time.Duration) keypool.Remaining {
	return keypool.Remaining{Left: left, Reset: reset, Known: true}
}

type headroomCase struct {
	name     string
	provider providers.Provider
	headers  headerList
	want     keypool.Headroom
}

func headroomCases(t testing.TB) []headroomCase {
	rfc := func(d time.Duration) string { return testNow.Add(d).Format(time.RFC3339) }
	return []headroomCase{
		{"openai", providers.OpenAI{}, with(
			[2]string{"x-ratelimit-limit-requests", "5000"}, [2]string{"x-ratelimit-limit-tokens", "160000"},
			[2]string{"x-ratelimit-remaining-requests", "4999"}, [2]string{"x-ratelimit-remaining-tokens", "159976"},
			[2]string{"x-ratelimit-reset-requests", "12ms"}, [2]string{"x-ratelimit-reset-tokens", "6m0s"}),
			keypool.Headroom{Requests: remaining(4999, 12*time.Millisecond), Tokens: remaining(159976, 6*time.Minute)}},
		{"openai spent requests", providers.OpenAI{}, with(
			[2]string{"x-ratelimit-remaining-requests", "0"}, [2]string{"x-ratelimit-reset-requests", "5s"}),
			keypool.Headroom{Requests: remaining(0, 5*time.Second)}},
		{"anthropic: the tightest token limit", providers.Anthropic{}, with(
			[2]string{"anthropic-ratelimit-requests-remaining", "49"}, [2]string{"anthropic-ratelimit-requests-reset", rfc(time.Second)},
			[2]string{"anthropic-ratelimit-tokens-remaining", "90000"}, [2]string{"anthropic-ratelimit-tokens-reset", rfc(10 * time.Second)},
			[2]string{"anthropic-ratelimit-input-tokens-remaining", "40000"}, [2]string{"anthropic-ratelimit-input-tokens-reset", rfc(8 * time.Second)},
			[2]string{"anthropic-ratelimit-output-tokens-remaining", "7000"}, [2]string{"anthropic-ratelimit-output-tokens-reset", rfc(3 * time.Second)}),
			keypool.Headroom{Requests: remaining(49, time.Second), Tokens: remaining(7000, 3*time.Second)}},
		{"azure: no resets", providers.AzureOpenAI{}, with(
			[2]string{"x-ratelimit-remaining-requests", "119"}, [2]string{"x-ratelimit-remaining-tokens", "19000"}),
			keypool.Headroom{Requests: remaining(119, 0), Tokens: remaining(19000, 0)}},
		{"gemini sends none", providers.Gemini{}, with(), keypool.Headroom{}},
		{"groq", compatible(t, "groq"), with(
			[2]string{"x-ratelimit-remaining-requests", "14370"}, [2]string{"x-ratelimit-reset-requests", "2m59.56s"},
			[2]string{"x-ratelimit-remaining-tokens", "5800"}, [2]string{"x-ratelimit-reset-tokens", "7.66s"}),
			keypool.Headroom{Requests: remaining(14370, 2*time.Minute+59560*time.Millisecond), Tokens: remaining(5800, 7660*time.Millisecond)}},
		{"cerebras: per day and per minute, in seconds", compatible(t, "cerebras"), with(
			[2]string{"x-ratelimit-remaining-requests-day", "14399"}, [2]string{"x-ratelimit-reset-requests-day", "33011.5"},
			[2]string{"x-ratelimit-remaining-tokens-minute", "59000"}, [2]string{"x-ratelimit-reset-tokens-minute", "11.25"}),
			keypool.Headroom{Requests: remaining(14399, 33011500*time.Millisecond), Tokens: remaining(59000, 11250*time.Millisecond)}},
		{"together: requests and tokens per second", compatible(t, "together"), with(
			[2]string{"x-ratelimit-remaining", "9"}, [2]string{"x-ratelimit-reset", "1"}, [2]string{"x-tokenlimit-remaining", "4000"}),
			keypool.Headroom{Requests: remaining(9, time.Second), Tokens: remaining(4000, 0)}},
		{"deepseek sends none", compatible(t, "deepseek"), with(), keypool.Headroom{}},
		{"garbage says nothing", providers.OpenAI{}, with(
			[2]string{"x-ratelimit-remaining-requests", "many"}, [2]string{"x-ratelimit-remaining-tokens", "-5"}),
			keypool.Headroom{}},
		{"a float count is read", providers.OpenAI{}, with([2]string{"x-ratelimit-remaining-tokens", "99.0"}),
			keypool.Headroom{Tokens: remaining(99, 0)}},
		{"a bad reset keeps the count", providers.OpenAI{}, with(
			[2]string{"x-ratelimit-remaining-requests", "3"}, [2]string{"x-ratelimit-reset-requests", "soon"}),
			keypool.Headroom{Requests: remaining(3, 0)}},
	}
}

func TestHeadroom(t *testing.T) {
	for _, tt := range headroomCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.provider.Headroom(tt.headers, testNow); got != tt.want {
				t.Errorf("Headroom = %+v\nwant      %+v", got, tt.want)
			}
		})
	}
}

// TestHeadroomAllocatesNothing: Headroom runs on every successful response.
func TestHeadroomAllocatesNothing(t *testing.T) {
	for _, tt := range headroomCases(t) {
		if tt.name == "garbage says nothing" || tt.name == "a bad reset keeps the count" {
			continue // strconv's errors allocate; garbage is not the hot path
		}
		var h providers.Headers = tt.headers // boxing the list allocates; extproc's view is boxed once per message
		if allocs := testing.AllocsPerRun(100, func() { tt.provider.Headroom(h, testNow) }); allocs != 0 {
			t.Errorf("%s: Headroom allocates %.1f times per call", tt.name, allocs)
		}
	}
}

// BenchmarkHeadroom measures Headroom on a realistic 200 against its baseline: the
// same header lookups with no parsing (what any reader of these headers pays).
func BenchmarkHeadroom(b *testing.B) {
	for _, tt := range headroomCases(b)[:7] {
		names := readNames(tt.headers)
		var h providers.Headers = tt.headers
		b.Run(tt.name+"/baseline", func(b *testing.B) {
			b.ReportAllocs()
			var n int
			for b.Loop() {
				for _, name := range names {
					n += len(h.Get(name))
				}
			}
			_ = n
		})
		b.Run(tt.name+"/headroom", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tt.provider.Headroom(h, testNow)
			}
		})
	}
}

// readNames are the rate-limit headers of h (the ones past the common ones).
func readNames(h headerList) []string {
	var names []string
	for _, kv := range h[len(commonResponseHeaders):] {
		names = append(names, kv[0])
	}
	return names
}
