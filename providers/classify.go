package providers

import (
	"encoding/json"
	"strings"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// What the headers alone can tell (every provider starts from this and refines it
// with its error body when the caller buffered one):
//   - 401 is the key's credential, whatever the body says: unauthorized.
//   - 403 may be the key's or the request's (model access, region): forbidden, which
//     the default policy corroborates.
//   - 429 with a rate-limit signal (retry-after-ms, x-ms-retry-after-ms, Retry-After,
//     or a limit whose remaining count is 0) is rate_limited; a bare 429 is
//     rate_limit_unconfirmed. Headers cannot tell a quota or a request too large from
//     a rate limit: both look like a 429 to them.
//   - 5xx and Anthropic's 529 are the provider's overload: overloaded.
//   - Anything else is no key failure.
// A provider whose 400 or 402 means a key problem (Gemini's API_KEY_INVALID,
// Anthropic's credit balance, OpenRouter's credits) says so in its own file.

// headerClass is the class of status from the headers alone; signal reports that the
// headers said a rate limit is spent.
func headerClass(status int, signal bool) (keypool.Class, bool) {
	switch {
	case status == 401:
		return keypool.ClassUnauthorized, true
	case status == 403:
		return keypool.ClassForbidden, true
	case status == 429 && signal:
		return keypool.ClassRateLimited, true
	case status == 429:
		return keypool.ClassRateLimitUnconfirmed, true
	case status == 529, status >= 500 && status <= 599:
		return keypool.ClassOverloaded, true
	}
	return "", false
}

// failure builds a Classify answer.
func failure(c keypool.Class, status int, hint keypool.Hint) (keypool.Failure, bool) {
	return keypool.Failure{Class: c, Hint: hint, Status: status}, true
}

// isFailureStatus reports whether a status can be a failure answer at all.
func isFailureStatus(status int) bool { return status >= 400 && status <= 599 }

// decodeBody decodes an error body into v. It reports false, leaving the header-only
// decision in force, for an empty, oversized or malformed body.
func decodeBody(body []byte, v any) bool {
	if len(body) == 0 || len(body) > MaxErrorBody {
		return false
	}
	return json.Unmarshal(body, v) == nil
}

// looseString is a JSON value read as a string: a string as is, a number as its
// digits, anything else (null, objects) as "". Error codes are strings at OpenAI,
// numbers at OpenRouter and strings of digits at Azure.
type looseString string

// UnmarshalJSON implements json.Unmarshaler; it never fails on a valid JSON value.
func (s *looseString) UnmarshalJSON(data []byte) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case string:
		*s = looseString(x)
	case float64:
		*s = looseString(strings.TrimSpace(string(data)))
	default:
		*s = ""
	}
	return nil
}

// containsFold reports whether s contains substr, ignoring ASCII case.
func containsFold(s, substr string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(substr))
}
