package providers

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // Gemini's daily quotas reset at midnight Pacific time, whatever the host's zone files

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Gemini is the Google AI Studio (Generative Language) API: `x-goog-api-key: <key>`,
// or the legacy `?key=` query parameter, errors as Google's
// {"error":{"code","message","status","details":[…]}}. The zero value is ready to use.
//
// Classification needs the body more than any other provider's: Gemini reports a bad
// key as 400 INVALID_ARGUMENT with the detail reason API_KEY_INVALID, and sends no
// retry headers, only RetryInfo.retryDelay ("52s") and QuotaFailure violations in its
// 429 RESOURCE_EXHAUSTED body. A per-day quota (quotaId …PerDay…) is answered with a
// retryDelay of seconds although it returns only at the next midnight Pacific time:
// its hint is that midnight. Header-only, a Gemini 400 is no failure and a 429 is
// rate_limit_unconfirmed.
type Gemini struct{}

// Name implements Provider.
func (Gemini) Name() string { return NameGemini }

// AuthHeader implements Provider.
func (Gemini) AuthHeader(key string) Header {
	return Header{Name: "x-goog-api-key", Value: key}
}

// ClientCredential implements Provider: x-goog-api-key, else ?key= in the path, else
// an OAuth access token in Authorization: Bearer (the API accepts all three).
func (Gemini) ClientCredential(h Headers) string {
	if v := strings.TrimSpace(h.Get("x-goog-api-key")); v != "" {
		return v
	}
	if v := queryKey(h.Get(":path")); v != "" {
		return v
	}
	return bearerToken(h.Get("authorization"))
}

// geminiError is the error object of Google's format, as far as classification reads it.
type geminiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Status  string `json:"status"`
	Details []struct {
		Type       string `json:"@type"`
		Reason     string `json:"reason"`     // google.rpc.ErrorInfo
		RetryDelay string `json:"retryDelay"` // google.rpc.RetryInfo
		Violations []struct {
			QuotaID string `json:"quotaId"` // google.rpc.QuotaFailure
		} `json:"violations"`
	} `json:"details"`
}

func decodeGeminiError(body []byte) (geminiError, bool) {
	var env struct {
		Error *geminiError `json:"error"`
	}
	if !decodeBody(body, &env) || env.Error == nil {
		return geminiError{}, false
	}
	return *env.Error, true
}

// hasReason reports whether an ErrorInfo detail carries one of reasons.
func (e geminiError) hasReason(reasons ...string) bool {
	for _, d := range e.Details {
		for _, r := range reasons {
			if d.Reason == r {
				return true
			}
		}
	}
	return false
}

// retryDelay is RetryInfo.retryDelay, a google.protobuf.Duration in JSON ("52s",
// "0.5s").
func (e geminiError) retryDelay() keypool.Hint {
	for _, d := range e.Details {
		if d.RetryDelay == "" {
			continue
		}
		v, ok := strings.CutSuffix(strings.TrimSpace(d.RetryDelay), "s")
		if !ok {
			continue
		}
		if secs, ok := parseSeconds(v); ok {
			return keypool.Hint{After: secs, Known: true}
		}
	}
	return keypool.Hint{}
}

// hasViolations reports whether the error carries a QuotaFailure violation.
func (e geminiError) hasViolations() bool {
	for _, d := range e.Details {
		if len(d.Violations) > 0 {
			return true
		}
	}
	return false
}

// perDay reports whether a QuotaFailure violation is of a daily quota.
func (e geminiError) perDay() bool {
	for _, d := range e.Details {
		for _, v := range d.Violations {
			if strings.Contains(v.QuotaID, "PerDay") {
				return true
			}
		}
	}
	return false
}

// Classify implements Provider.
func (Gemini) Classify(status int, h Headers, body []byte, now time.Time) (keypool.Failure, bool) {
	if !isFailureStatus(status) {
		return keypool.Failure{}, false
	}
	retry := retryHeaderHint(h, now)
	e, parsed := decodeGeminiError(body)
	switch {
	case !parsed:
		// Header-only: a 400 is the request's until its body says otherwise.
	case e.hasReason("API_KEY_INVALID"):
		return failure(keypool.ClassUnauthorized, status, keypool.Hint{})
	case status == 403 && (e.hasReason("API_KEY_SERVICE_BLOCKED", "SERVICE_DISABLED", "CONSUMER_SUSPENDED",
		"API_KEY_HTTP_REFERRER_BLOCKED", "API_KEY_IP_ADDRESS_BLOCKED", "API_KEY_ANDROID_APP_BLOCKED",
		"API_KEY_IOS_APP_BLOCKED") || containsFold(e.Message, "api key was reported as leaked")):
		// The key's project cannot call the API at all, or Google revoked the key.
		return failure(keypool.ClassUnauthorized, status, keypool.Hint{})
	case status == 429 && e.perDay():
		return failure(keypool.ClassRateLimited, status, firstKnown(retry, untilPacificMidnight(now)))
	case status == 429 && (e.hasViolations() || e.retryDelay().Known):
		// A quota of the key's project, named and timed: without them a
		// RESOURCE_EXHAUSTED may be shared capacity, which the header class leaves
		// unconfirmed.
		return failure(keypool.ClassRateLimited, status, firstKnown(retry, e.retryDelay()))
	}
	class, ok := headerClass(status, retry.Known)
	if !ok {
		return keypool.Failure{}, false
	}
	return failure(class, status, retry)
}

// untilPacificMidnight is the wait until Gemini's daily quotas reset.
func untilPacificMidnight(now time.Time) keypool.Hint {
	loc, err := time.LoadLocation("America/Los_Angeles")
	if err != nil {
		loc = time.FixedZone("PST", -8*60*60) // unreachable with time/tzdata; an hour off at worst
	}
	t := now.In(loc)
	next := time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
	return keypool.Hint{After: untilTime(next, now), Known: true}
}

// WantsBody implements Provider: Gemini's 400, 403 and 429 are told apart by their
// bodies only.
func (Gemini) WantsBody(status int, _ Headers) bool {
	return status == 400 || status == 403 || status == 429
}

// Headroom implements Provider: Gemini sends no rate-limit headers.
func (Gemini) Headroom(Headers, time.Time) keypool.Headroom { return keypool.Headroom{} }

// Model implements Provider: the {model} of …/models/{model}:generateContent (and
// :streamGenerateContent, :countTokens, :embedContent, …).
func (Gemini) Model(path string) string {
	path, _, _ = strings.Cut(path, "?")
	const marker = "/models/"
	i := strings.Index(path, marker)
	if i < 0 {
		return ""
	}
	model := path[i+len(marker):]
	if j := strings.IndexAny(model, ":/"); j >= 0 {
		model = model[:j]
	}
	return model
}

// StripPathCredential implements Provider: see stripKeyParam.
func (Gemini) StripPathCredential(path string) (string, bool) { return stripKeyParam(path) }

// ErrorResponse implements Provider, in Google's error format: the HTTP status as
// code, the canonical status name, and for a 429 a RetryInfo detail with the wait,
// as Gemini's own 429 carries it.
func (Gemini) ErrorResponse(e ErrorInfo) Response {
	type detail struct {
		Type       string `json:"@type"`
		RetryDelay string `json:"retryDelay,omitempty"`
		Reason     string `json:"reason,omitempty"`
		Domain     string `json:"domain,omitempty"`
	}
	type apiError struct {
		Code    int      `json:"code"`
		Message string   `json:"message"`
		Status  string   `json:"status"`
		Details []detail `json:"details,omitempty"`
	}
	ae := apiError{Code: e.Status, Message: e.Message}
	switch e.Kind {
	case ErrorRateLimited:
		ae.Status = "RESOURCE_EXHAUSTED"
		if e.RetryAfter > 0 {
			ae.Details = append(ae.Details, detail{
				Type:       "type.googleapis.com/google.rpc.RetryInfo",
				RetryDelay: strconv.FormatInt(retryAfterSeconds(e.RetryAfter), 10) + "s",
			})
		}
	case ErrorKeysRejected, ErrorNoKeys:
		ae.Status = "UNAVAILABLE"
	default:
		ae.Status = "INTERNAL"
	}
	reason := map[ErrorKind]string{
		ErrorRateLimited: "KEYPOOL_RATE_LIMITED", ErrorKeysRejected: "KEYPOOL_KEYS_REJECTED",
		ErrorNoKeys: "KEYPOOL_NO_KEYS",
	}[e.Kind]
	if reason == "" {
		reason = "KEYPOOL_MISCONFIGURED"
	}
	ae.Details = append(ae.Details, detail{Type: "type.googleapis.com/google.rpc.ErrorInfo", Reason: reason, Domain: "envoy-keypool"})
	body, _ := json.Marshal(struct {
		Error apiError `json:"error"`
	}{ae}) // cannot fail: only strings and ints
	return Response{Status: e.Status, Headers: errorHeaders(e), Body: body}
}
