package providers_test

import (
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// maxHint mirrors the package's bound on every parsed wait.
const maxHint = 365 * 24 * time.Hour

// FuzzClassify feeds every provider arbitrary statuses, retry headers and error
// bodies. Whatever arrives, Classify answers a known class with a sane hint, and a
// body that is not JSON decides nothing.
func FuzzClassify(f *testing.F) {
	for _, body := range sampleBodies() {
		for _, status := range []int{400, 401, 402, 403, 413, 429, 503, 529} {
			f.Add(status, "", "", body)
		}
	}
	f.Add(429, "7", "0", `{"error":{"code":"429","message":"Please retry after 99999999999999999999 seconds."}}`)
	f.Add(429, "-1", "x", `{"error":{"message":"Please try again in -5s."}}`)
	f.Add(429, "", "", `{"error":{"details":[{"retryDelay":"1e309s"},{"violations":[{"quotaId":"PerDay"}]}]}}`)
	f.Add(402, "Wed, 25 Nov 2026 12:01:30 GMT", "", `{"error":{"code":402,"metadata":{"headers":{"X-RateLimit-Remaining":0,"X-RateLimit-Reset":-1}}}}`)
	f.Add(200, "", "", openAIQuota)

	ps := allProviders(f)
	f.Fuzz(func(t *testing.T, status int, retryAfter, remaining, body string) {
		h := headerMap{"retry-after": retryAfter, "x-ratelimit-remaining-requests": remaining,
			"x-ratelimit-reset-requests": retryAfter, "anthropic-ratelimit-requests-remaining": remaining}
		for _, p := range ps {
			fb, ok := p.Classify(status, h, []byte(body), testNow)
			fh, hok := p.Classify(status, h, nil, testNow)
			for _, r := range []struct {
				f  keypool.Failure
				ok bool
			}{{fb, ok}, {fh, hok}} {
				if !r.ok {
					if r.f != (keypool.Failure{}) {
						t.Fatalf("%s: no failure, yet %+v", p.Name(), r.f)
					}
					continue
				}
				if !slices.Contains(keypool.Classes(), r.f.Class) || r.f.Status != status {
					t.Fatalf("%s: %+v for status %d", p.Name(), r.f, status)
				}
				if r.f.Hint.Known && (r.f.Hint.After < 0 || r.f.Hint.After > maxHint) || !r.f.Hint.Known && r.f.Hint.After != 0 {
					t.Fatalf("%s: hint %+v", p.Name(), r.f.Hint)
				}
			}
			if (status < 400 || status > 599) && (ok || hok) {
				t.Fatalf("%s: status %d classified as a failure", p.Name(), status)
			}
			if !json.Valid([]byte(body)) && (ok != hok || fb != fh) {
				t.Fatalf("%s: a body that is not JSON changed the class: %+v %v vs header-only %+v %v", p.Name(), fb, ok, fh, hok)
			}
		}
	})
}

// FuzzStripPathCredential: the result is never empty, carries no key= parameter, keeps
// every other parameter in order, and is the path itself when nothing was removed.
func FuzzStripPathCredential(f *testing.F) {
	for _, s := range []string{
		"/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=abc",
		"/x?key=1&key=2&a=%2F&b", "?key=", "/x?%6Bey=1", "/x?&&&", "/x?a=1;key=2", "/", "",
		"/v1/chat/completions", "/x?key=%zz", "/x?+key=1&k%65y=2",
	} {
		f.Add(s)
	}
	p := providers.Gemini{}
	f.Fuzz(func(t *testing.T, path string) {
		got, removed := p.StripPathCredential(path)
		if !removed {
			if got != path {
				t.Fatalf("nothing removed, yet %q became %q", path, got)
			}
			return
		}
		if got == "" {
			t.Fatalf("%q stripped to an empty path", path)
		}
		if c := p.ClientCredential(headerMap{":path": got}); c != "" {
			t.Fatalf("%q stripped to %q, which still carries key %q", path, got, c)
		}
		if again, more := p.StripPathCredential(got); more || again != got {
			t.Fatalf("stripping %q twice changed it again: %q", got, again)
		}
		if want := otherParams(path); !slices.Equal(otherParams(got), want) {
			t.Fatalf("%q → %q: kept %q, want %q", path, got, otherParams(got), want)
		}
	})
}

// otherParams lists the non-empty parameters of path's query that are not key=.
func otherParams(path string) []string {
	_, q, _ := strings.Cut(path, "?")
	var out []string
	for _, param := range strings.Split(q, "&") {
		name, _, _ := strings.Cut(param, "=")
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if param != "" && name != "key" {
			out = append(out, param)
		}
	}
	return out
}

// FuzzHeadroom: any remaining and reset values give a non-negative count and a reset
// within bounds, or nothing.
func FuzzHeadroom(f *testing.F) {
	f.Add("4999", "6m0s", "2026-11-25T12:00:42Z", "33011.382867")
	f.Add("-1", "-1s", "garbage", "NaN")
	f.Add("99.5", "1e400", "9999-12-31T23:59:59Z", "Inf")
	f.Add("999999999999999999999", "9999999999h", "0001-01-01T00:00:00Z", "-0")
	ps := allProviders(f)
	f.Fuzz(func(t *testing.T, remaining, duration, rfc, seconds string) {
		h := headerMap{}
		for _, kind := range []string{"requests", "tokens", "input-tokens", "output-tokens"} {
			h["x-ratelimit-remaining-"+kind] = remaining
			h["x-ratelimit-reset-"+kind] = duration
			h["anthropic-ratelimit-"+kind+"-remaining"] = remaining
			h["anthropic-ratelimit-"+kind+"-reset"] = rfc
		}
		for _, k := range []string{"requests-day", "tokens-minute"} {
			h["x-ratelimit-remaining-"+k], h["x-ratelimit-reset-"+k] = remaining, seconds
		}
		h["x-ratelimit-remaining"], h["x-ratelimit-reset"] = remaining, seconds
		for _, p := range ps {
			hr := p.Headroom(h, testNow)
			for _, r := range []keypool.Remaining{hr.Requests, hr.Tokens} {
				if r.Known && (r.Left < 0 || r.Reset < 0 || r.Reset > maxHint) || !r.Known && r != (keypool.Remaining{}) {
					t.Fatalf("%s: %+v from remaining %q", p.Name(), r, remaining)
				}
			}
		}
	})
}
