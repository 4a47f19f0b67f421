package providers

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// OpenAI is the OpenAI API: `Authorization: Bearer <key>`, errors as
// {"error":{"message","type","param","code"}}, rate limits in x-ratelimit-* headers
// with resets as Go durations. The zero value is ready to use.
//
// Classification: 401 is unauthorized. A 429's body tells three things apart:
// code insufficient_quota (quota), a message "Request too large for …" (the request's
// tokens exceed the key's per-minute limit: request_too_large) and
// rate_limit_exceeded "Rate limit reached … Please try again in 2s" (rate_limited,
// with that wait as the hint). A 403 unsupported_country_region_territory is about
// where the proxy runs, not the key: no failure.
type OpenAI struct{}

// openAILimits are OpenAI's rate-limit headers (also Groq's and most compatible APIs').
var openAILimits = []limit{ // read-only
	{remaining: "x-ratelimit-remaining-requests", reset: "x-ratelimit-reset-requests", format: resetDuration},
	{remaining: "x-ratelimit-remaining-tokens", reset: "x-ratelimit-reset-tokens", format: resetDuration},
}

// Name implements Provider.
func (OpenAI) Name() string { return NameOpenAI }

// AuthHeader implements Provider.
func (OpenAI) AuthHeader(key string) Header {
	return Header{Name: "authorization", Value: "Bearer " + key}
}

// ClientCredential implements Provider.
func (OpenAI) ClientCredential(h Headers) string { return bearerToken(h.Get("authorization")) }

// Classify implements Provider.
func (OpenAI) Classify(status int, h Headers, body []byte, now time.Time) (keypool.Failure, bool) {
	return classifyOpenAIFormat(status, h, body, now, openAILimits)
}

// WantsBody implements Provider: only a 429's and a 403's bodies change their class.
func (OpenAI) WantsBody(status int, _ Headers) bool { return status == 429 || status == 403 }

// Headroom implements Provider.
func (OpenAI) Headroom(h Headers, now time.Time) keypool.Headroom {
	return keypool.Headroom{
		Requests: readRemaining(h, now, openAILimits[0]),
		Tokens:   readRemaining(h, now, openAILimits[1]),
	}
}

// Model implements Provider: OpenAI names the model in the body only.
func (OpenAI) Model(string) string { return "" }

// StripPathCredential implements Provider: see stripKeyParam.
func (OpenAI) StripPathCredential(path string) (string, bool) { return stripKeyParam(path) }

// ErrorResponse implements Provider. The type and code follow OpenAI's own errors
// where one fits (429 rate_limit_exceeded), so SDKs and clients that branch on them
// keep working.
func (OpenAI) ErrorResponse(e ErrorInfo) Response { return openAIErrorResponse(e) }

// openAIErrorResponse is an error in OpenAI's format, shared by the APIs that copy it.
func openAIErrorResponse(e ErrorInfo) Response {
	type apiError struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	}
	ae := apiError{Message: e.Message}
	switch e.Kind {
	case ErrorRateLimited:
		ae.Type, ae.Code = "requests", "rate_limit_exceeded"
	case ErrorKeysRejected:
		ae.Type, ae.Code = "server_error", "upstream_keys_rejected"
	case ErrorNoKeys:
		ae.Type, ae.Code = "server_error", "no_keys_available"
	default:
		ae.Type, ae.Code = "server_error", "keypool_misconfigured"
	}
	body, _ := json.Marshal(struct {
		Error apiError `json:"error"`
	}{ae}) // cannot fail: only strings
	return Response{Status: e.Status, Headers: errorHeaders(e), Body: body}
}

// openAIError is the error object of OpenAI's format, as far as classification reads
// it. Type and code are loose: OpenRouter sends a numeric code, Azure a string of
// digits.
type openAIError struct {
	Message string      `json:"message"`
	Type    looseString `json:"type"`
	Code    looseString `json:"code"`
	// Metadata.Headers are the rate-limit headers OpenRouter puts in its 429 body
	// (X-RateLimit-Remaining, X-RateLimit-Reset in Unix milliseconds).
	Metadata struct {
		Headers map[string]looseString `json:"headers"`
	} `json:"metadata"`
}

// metadataReset is the wait until the X-RateLimit-Reset of OpenRouter's body metadata,
// when its X-RateLimit-Remaining says the limit is spent.
func (e openAIError) metadataReset(now time.Time) keypool.Hint {
	var remaining, reset string
	for name, v := range e.Metadata.Headers {
		switch strings.ToLower(name) {
		case "x-ratelimit-remaining":
			remaining = string(v)
		case "x-ratelimit-reset":
			reset = string(v)
		}
	}
	if !isZero(remaining) {
		return keypool.Hint{}
	}
	if d, ok := parseReset(reset, now, resetUnixMillis); ok {
		return keypool.Hint{After: d, Known: true}
	}
	return keypool.Hint{}
}

// decodeOpenAIError reads {"error":{…}}; false when the body is not of that shape.
func decodeOpenAIError(body []byte) (openAIError, bool) {
	var env struct {
		Error *openAIError `json:"error"`
	}
	if !decodeBody(body, &env) || env.Error == nil {
		return openAIError{}, false
	}
	return *env.Error, true
}

// is reports whether the error's code or type is s.
func (e openAIError) is(s string) bool { return string(e.Code) == s || string(e.Type) == s }

// classifyOpenAIFormat classifies an answer of an API that speaks OpenAI's error
// format, with limits as its rate-limit headers.
func classifyOpenAIFormat(status int, h Headers, body []byte, now time.Time, limits []limit) (keypool.Failure, bool) {
	if !isFailureStatus(status) {
		return keypool.Failure{}, false
	}
	e, parsed := decodeOpenAIError(body)
	return classifyOpenAIError(status, h, e, parsed, now, limits)
}

// classifyOpenAIError is classifyOpenAIFormat for a failure status whose body was
// decoded already (parsed false: no usable body), so that a provider that reads the
// body further decodes it once.
func classifyOpenAIError(status int, h Headers, e openAIError, parsed bool, now time.Time, limits []limit) (keypool.Failure, bool) {
	retry := retryHeaderHint(h, now)
	reset, spent := resetHint(h, now, limits)
	class, ok := headerClass(status, retry.Known || spent)
	var bodyHint keypool.Hint
	if parsed {
		switch {
		case e.is("insufficient_quota"):
			// The account is out of credit: the rate-limit resets say nothing about
			// when it returns, only an explicit retry header would.
			return failure(keypool.ClassQuota, status, retry)
		case e.is("unsupported_country_region_territory"):
			return keypool.Failure{}, false // where the proxy runs: every key gets it
		case status == 429 && containsFold(e.Message, "request too large"):
			return failure(keypool.ClassRequestTooLarge, status, keypool.Hint{})
		case status == 429 && (e.is("rate_limit_exceeded") || containsFold(e.Message, "rate limit")):
			class, ok = keypool.ClassRateLimited, true
			bodyHint = firstKnown(tryAgainIn(e.Message), e.metadataReset(now))
		case e.is("invalid_api_key"), e.is("account_deactivated"):
			class, ok = keypool.ClassUnauthorized, true
		}
	}
	if !ok {
		return keypool.Failure{}, false
	}
	return failure(class, status, firstKnown(retry, bodyHint, reset))
}

// tryAgainIn reads the wait of OpenAI's "… Please try again in 2.376s." (also "20ms",
// "1m30s"); unknown when the message has none.
func tryAgainIn(msg string) keypool.Hint {
	const marker = "try again in "
	i := strings.Index(strings.ToLower(msg), marker)
	if i < 0 {
		return keypool.Hint{}
	}
	rest := msg[i+len(marker):]
	if j := strings.IndexAny(rest, " \n,;"); j >= 0 {
		rest = rest[:j]
	}
	rest = strings.TrimSuffix(rest, ".")
	d, err := time.ParseDuration(rest)
	if err != nil || d < 0 {
		return keypool.Hint{}
	}
	return keypool.Hint{After: min(d, maxHint), Known: true}
}
