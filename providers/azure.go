package providers

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// AzureOpenAI is Azure OpenAI (Azure AI Foundry models behind
// https://{resource}.openai.azure.com): `api-key: <key>`, or an Entra ID access token
// in `Authorization: Bearer` (a client credential only: a pool holds API keys).
// Deployment paths (/openai/deployments/{name}/chat/completions?api-version=…) name
// the model; the v1 API paths (/openai/v1/…) carry it in the body. Errors are
// OpenAI-shaped, with Azure's codes: {"error":{"code":"429","message":"… Please retry
// after 2 seconds."}}. The zero value is ready to use.
//
// Hints come from retry-after-ms, x-ms-retry-after-ms, Retry-After, then the body's
// "retry after N seconds". Azure sends x-ratelimit-remaining-requests and
// -tokens on successful answers, but no reset.
type AzureOpenAI struct{}

// azureLimits are Azure's remaining headers; Azure sends no reset headers.
var azureLimits = []limit{ // read-only
	{remaining: "x-ratelimit-remaining-requests"},
	{remaining: "x-ratelimit-remaining-tokens"},
}

// Name implements Provider.
func (AzureOpenAI) Name() string { return NameAzureOpenAI }

// AuthHeader implements Provider.
func (AzureOpenAI) AuthHeader(key string) Header {
	return Header{Name: "api-key", Value: key}
}

// ClientCredential implements Provider: api-key, else an Entra ID bearer token.
func (AzureOpenAI) ClientCredential(h Headers) string {
	if v := strings.TrimSpace(h.Get("api-key")); v != "" {
		return v
	}
	return bearerToken(h.Get("authorization"))
}

// Classify implements Provider.
func (AzureOpenAI) Classify(status int, h Headers, body []byte, now time.Time) (keypool.Failure, bool) {
	if !isFailureStatus(status) {
		return keypool.Failure{}, false
	}
	e, parsed := decodeOpenAIError(body)
	f, ok := classifyOpenAIError(status, h, e, parsed, now, azureLimits)
	if !ok || status != 429 || f.Class == keypool.ClassQuota || f.Class == keypool.ClassRequestTooLarge {
		return f, ok
	}
	// Azure's 429 says "exceeded token rate limit … Please retry after N seconds" in
	// its body: a rate limit with a wait, when the headers gave none.
	if parsed {
		if hint := retryAfterInMessage(e.Message); hint.Known {
			f.Class = keypool.ClassRateLimited
			f.Hint = firstKnown(retryHeaderHint(h, now), hint)
		} else if containsFold(e.Message, "rate limit") {
			f.Class = keypool.ClassRateLimited
		}
	}
	return f, true
}

// retryAfterInMessage reads the N of Azure's "… retry after N second(s) …".
func retryAfterInMessage(msg string) keypool.Hint {
	const marker = "retry after "
	i := strings.Index(strings.ToLower(msg), marker)
	if i < 0 {
		return keypool.Hint{}
	}
	rest := msg[i+len(marker):]
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 || !strings.HasPrefix(strings.ToLower(strings.TrimSpace(rest[n:])), "second") {
		return keypool.Hint{}
	}
	secs, err := strconv.ParseInt(rest[:n], 10, 64)
	if err != nil {
		return keypool.Hint{After: maxHint, Known: true} // only digits: too many of them
	}
	return keypool.Hint{After: min(time.Duration(secs)*time.Second, maxHint), Known: secs >= 0}
}

// WantsBody implements Provider: a 429 without retry headers carries its wait in the
// body; a 429's body also tells a quota or an oversized request; a 403's body may be
// about the client's region.
func (AzureOpenAI) WantsBody(status int, _ Headers) bool { return status == 403 || status == 429 }

// Headroom implements Provider: remaining requests and tokens, without resets.
func (AzureOpenAI) Headroom(h Headers, now time.Time) keypool.Headroom {
	return keypool.Headroom{
		Requests: readRemaining(h, now, azureLimits[0]),
		Tokens:   readRemaining(h, now, azureLimits[1]),
	}
}

// Model implements Provider: the {name} of /openai/deployments/{name}/…, the
// deployment the request goes to; "" for the v1 API paths.
func (AzureOpenAI) Model(path string) string {
	path, _, _ = strings.Cut(path, "?")
	const marker = "/deployments/"
	i := strings.Index(path, marker)
	if i < 0 {
		return ""
	}
	name, _, _ := strings.Cut(path[i+len(marker):], "/")
	return name
}

// StripPathCredential implements Provider: see stripKeyParam.
func (AzureOpenAI) StripPathCredential(path string) (string, bool) { return stripKeyParam(path) }

// ErrorResponse implements Provider: OpenAI's shape (openai-go configured for Azure
// reads it as its typed error), with Azure's code "429" and its "Please retry after N
// seconds." for a rate limit.
func (AzureOpenAI) ErrorResponse(e ErrorInfo) Response {
	if e.Kind != ErrorRateLimited {
		return openAIErrorResponse(e)
	}
	msg := e.Message
	if e.RetryAfter > 0 {
		msg += ". Please retry after " + strconv.FormatInt(retryAfterSeconds(e.RetryAfter), 10) + " seconds."
	}
	type apiError struct {
		Code    string  `json:"code"`
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
	}
	body, _ := json.Marshal(struct {
		Error apiError `json:"error"`
	}{apiError{Code: "429", Message: msg, Type: "requests"}}) // cannot fail: only strings
	return Response{Status: e.Status, Headers: errorHeaders(e), Body: body}
}
