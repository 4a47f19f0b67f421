package mockprovider

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// openAIAPI imitates POST /v1/chat/completions.
type openAIAPI struct{}

func (openAIAPI) provider() Provider { return OpenAI }

func (openAIAPI) credential(r *http.Request) string { return bearerToken(r.Header) }

func (openAIAPI) fromPath(*http.Request, *chatRequest) {}

func (openAIAPI) requestIDHeader() string { return "x-request-id" }

func (openAIAPI) missingCredential() (int, apiError) {
	return http.StatusUnauthorized, apiError{
		Type:    "invalid_request_error",
		Message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
	}
}

// defaultError follows the shapes in PROVIDERS.md; the key is never echoed, unlike the
// real 401 which shows a masked key, so no test can mistake a body for key material.
func (openAIAPI) defaultError(status int) apiError {
	switch status {
	case http.StatusUnauthorized:
		return apiError{Type: "invalid_request_error", Code: "invalid_api_key", Message: "Incorrect API key provided."}
	case http.StatusForbidden:
		return apiError{Type: "request_forbidden", Code: "unsupported_country_region_territory", Message: "Country, region, or territory not supported"}
	case http.StatusNotFound:
		return apiError{Type: "invalid_request_error", Code: "model_not_found", Message: "The model does not exist or you do not have access to it."}
	case http.StatusTooManyRequests:
		return apiError{Type: "requests", Code: "rate_limit_exceeded", Message: "Rate limit reached for requests per min (RPM). Please try again later."}
	case http.StatusServiceUnavailable:
		return apiError{Type: "server_error", Message: "The engine is currently overloaded, please try again later."}
	}
	if status >= 500 {
		return apiError{Type: "server_error", Message: "The server had an error while processing your request."}
	}
	return apiError{Type: "invalid_request_error", Message: http.StatusText(status)}
}

// failure follows OpenAI's documented bodies (platform.openai.com/docs/guides/error-codes).
func (a openAIAPI) failure(name string, req chatRequest, retryDelay time.Duration) (int, apiError) {
	model := modelOr(req.Model, "gpt-mock")
	switch name {
	case FailureRateLimited:
		wait := "1s"
		if retryDelay > 0 {
			wait = retryDelay.String()
		}
		return http.StatusTooManyRequests, apiError{Type: "requests", Code: "rate_limit_exceeded",
			Message: "Rate limit reached for " + model + " in organization org-mock on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in " + wait + "."}
	case FailureQuota:
		return http.StatusTooManyRequests, apiError{Type: "insufficient_quota", Code: "insufficient_quota",
			Message: "You exceeded your current quota, please check your plan and billing details."}
	case FailureRequestTooLarge:
		return http.StatusTooManyRequests, apiError{Type: "tokens", Code: "rate_limit_exceeded",
			Message: "Request too large for " + model + " in organization org-mock on tokens per min (TPM): Limit 30000, Requested 45000. The input or output tokens must be reduced in order to run successfully."}
	case FailureUnauthorized:
		return http.StatusUnauthorized, a.defaultError(http.StatusUnauthorized)
	case FailureForbidden:
		return http.StatusForbidden, apiError{Type: "invalid_request_error", Code: "model_not_found",
			Message: "Project `proj_mock` does not have access to model `" + model + "`"}
	case FailureRegion:
		return http.StatusForbidden, a.defaultError(http.StatusForbidden)
	}
	return http.StatusServiceUnavailable, a.defaultError(http.StatusServiceUnavailable)
}

// openAIErrorBody is {"error":{"message","type","param","code"}}; param and an empty
// code are null, as OpenAI sends them.
type openAIErrorBody struct {
	Error openAIErrorObject `json:"error"`
}

type openAIErrorObject struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (openAIAPI) errorBody(_ string, _ int, e apiError) any {
	body := openAIErrorBody{Error: openAIErrorObject{Message: e.Message, Type: e.Type}}
	if e.Code != "" {
		body.Error.Code = &e.Code
	}
	return body
}

// rateLimitHeaders writes OpenAI's x-ratelimit-* headers, resets as Go durations.
func (openAIAPI) rateLimitHeaders(h http.Header, rl RateLimit, _ time.Time) {
	for kind, left := range map[string]*int64{"requests": rl.RemainingRequests, "tokens": rl.RemainingTokens} {
		if left == nil {
			continue
		}
		h.Set("x-ratelimit-remaining-"+kind, strconv.FormatInt(*left, 10))
		h.Set("x-ratelimit-reset-"+kind, rl.Reset.String())
	}
}

// compatibleAPI imitates the openai-compatible family: OpenAI's protocol under another
// base path, and a 402 for an empty credit balance (OpenRouter, DeepSeek).
type compatibleAPI struct{ openAIAPI }

func (compatibleAPI) provider() Provider { return OpenAICompatible }

func (a compatibleAPI) failure(name string, req chatRequest, retryDelay time.Duration) (int, apiError) {
	if name == FailureQuota {
		return http.StatusPaymentRequired, apiError{Type: "insufficient_quota", Message: "Insufficient credits. Add more credits to continue."}
	}
	return a.openAIAPI.failure(name, req, retryDelay)
}

type openAIMessage struct {
	Role    string  `json:"role"`
	Content string  `json:"content"`
	Refusal *string `json:"refusal"`
}

type openAIChoice struct {
	Index        int           `json:"index"`
	Message      openAIMessage `json:"message"`
	Logprobs     *struct{}     `json:"logprobs"`
	FinishReason string        `json:"finish_reason"`
}

type openAIUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type openAICompletion struct {
	ID      string         `json:"id"`
	Object  string         `json:"object"`
	Created int64          `json:"created"`
	Model   string         `json:"model"`
	Choices []openAIChoice `json:"choices"`
	Usage   openAIUsage    `json:"usage"`
}

type openAIDelta struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content"`
}

type openAIChunkChoice struct {
	Index        int         `json:"index"`
	Delta        openAIDelta `json:"delta"`
	Logprobs     *struct{}   `json:"logprobs"`
	FinishReason *string     `json:"finish_reason"`
}

type openAIChunk struct {
	ID      string              `json:"id"`
	Object  string              `json:"object"`
	Created int64               `json:"created"`
	Model   string              `json:"model"`
	Choices []openAIChunkChoice `json:"choices"`
	Usage   *openAIUsage        `json:"usage,omitempty"`
}

// mockUsage is a plausible token count: one prompt token, one per reply piece.
var mockUsage = openAIUsage{PromptTokens: 1, CompletionTokens: len(replyPieces), TotalTokens: 1 + len(replyPieces)}

func (openAIAPI) writeReply(w http.ResponseWriter, requestID string, req chatRequest) {
	id := "chatcmpl-" + strings.TrimPrefix(requestID, "req_")
	model := modelOr(req.Model, "gpt-mock")
	created := time.Now().Unix()
	if !req.Stream {
		writeJSON(w, http.StatusOK, openAICompletion{
			ID:      id,
			Object:  "chat.completion",
			Created: created,
			Model:   model,
			Choices: []openAIChoice{{
				Message:      openAIMessage{Role: "assistant", Content: ReplyText},
				FinishReason: "stop",
			}},
			Usage: mockUsage,
		})
		return
	}

	sse := startSSE(w)
	chunk := func(choices []openAIChunkChoice, usage *openAIUsage) openAIChunk {
		return openAIChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: model, Choices: choices, Usage: usage}
	}
	// As OpenAI does: the role first, then content deltas, then the finish reason,
	// then usage when stream_options.include_usage asks for it, then [DONE].
	events := []openAIChunk{chunk([]openAIChunkChoice{{Delta: openAIDelta{Role: "assistant"}}}, nil)}
	for _, piece := range replyPieces {
		events = append(events, chunk([]openAIChunkChoice{{Delta: openAIDelta{Content: piece}}}, nil))
	}
	stop := "stop"
	events = append(events, chunk([]openAIChunkChoice{{FinishReason: &stop}}, nil))
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		usage := mockUsage
		events = append(events, chunk([]openAIChunkChoice{}, &usage))
	}
	for _, ev := range events {
		if sse.jsonEvent("", ev) != nil {
			return // the client went away; there is no one to tell
		}
	}
	_ = sse.event("", []byte("[DONE]"))
}

// modelOr returns model, or fallback when the request named none.
func modelOr(model, fallback string) string {
	if model == "" {
		return fallback
	}
	return model
}
