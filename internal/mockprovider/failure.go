package mockprovider

// The failures a [Behavior] can name, after the failure classes envoy-keypool tells
// apart. Each provider answers with the status and body its documentation gives for
// it (see each provider's failure method).
const (
	// FailureRateLimited: the key's rate limit is spent (OpenAI 429
	// rate_limit_exceeded "Rate limit reached …", Anthropic 429 rate_limit_error,
	// Gemini 429 per-minute QuotaFailure with RetryInfo, Azure 429 "… Please retry
	// after N seconds").
	FailureRateLimited = "rate_limited"
	// FailureQuota: the account is out of credit (OpenAI 429 insufficient_quota,
	// Anthropic 400 "Your credit balance is too low", Gemini 429 per-day quota, a
	// compatible API's 402).
	FailureQuota = "quota"
	// FailureRequestTooLarge: the request exceeds the key's limit (OpenAI 429 "Request
	// too large for … tokens per min", Anthropic 413 request_too_large).
	FailureRequestTooLarge = "request_too_large"
	// FailureUnauthorized: the key is invalid (401; Gemini's 400 API_KEY_INVALID).
	FailureUnauthorized = "unauthorized"
	// FailureForbidden: the key may not use what the request asks for (403 model
	// access, Anthropic permission_error, Gemini PERMISSION_DENIED).
	FailureForbidden = "forbidden"
	// FailureRegion: the caller's region is not served (OpenAI 403
	// unsupported_country_region_territory, Gemini 400 FAILED_PRECONDITION): not the
	// key's fault.
	FailureRegion = "region"
	// FailureOverloaded: the provider is overloaded (503; Anthropic 529).
	FailureOverloaded = "overloaded"
)

// Failures lists the failures a Behavior can name.
func Failures() []string {
	return []string{FailureRateLimited, FailureQuota, FailureRequestTooLarge, FailureUnauthorized,
		FailureForbidden, FailureRegion, FailureOverloaded}
}
