package mockprovider

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// anthropicAPI imitates POST /v1/messages.
type anthropicAPI struct{}

func (anthropicAPI) provider() Provider { return Anthropic }

// credential prefers x-api-key, Anthropic's documented header, and falls back to
// Authorization: Bearer, which anthropic-sdk-go/v2's option.WithAPIKey sends.
func (anthropicAPI) credential(r *http.Request) string {
	if key := strings.TrimSpace(r.Header.Get("X-Api-Key")); key != "" {
		return key
	}
	return bearerToken(r.Header)
}

func (anthropicAPI) fromPath(*http.Request, *chatRequest) {}

func (anthropicAPI) requestIDHeader() string { return "request-id" }

func (anthropicAPI) missingCredential() (int, apiError) {
	return http.StatusUnauthorized, apiError{Type: "authentication_error", Message: "x-api-key header is required"}
}

// defaultError follows Anthropic's documented error types by status.
func (anthropicAPI) defaultError(status int) apiError {
	switch status {
	case http.StatusBadRequest:
		return apiError{Type: "invalid_request_error", Message: "Invalid request."}
	case http.StatusUnauthorized:
		return apiError{Type: "authentication_error", Message: "invalid x-api-key"}
	case http.StatusPaymentRequired:
		return apiError{Type: "billing_error", Message: "Your credit balance is too low to access the Anthropic API."}
	case http.StatusForbidden:
		return apiError{Type: "permission_error", Message: "Your API key does not have permission to use the specified resource."}
	case http.StatusNotFound:
		return apiError{Type: "not_found_error", Message: "The requested resource could not be found."}
	case http.StatusRequestEntityTooLarge:
		return apiError{Type: "request_too_large", Message: "Request exceeds the maximum allowed number of bytes."}
	case http.StatusTooManyRequests:
		return apiError{Type: "rate_limit_error", Message: "This request would exceed the rate limit for your organization. Please try again later."}
	case http.StatusGatewayTimeout:
		return apiError{Type: "timeout_error", Message: "The request timed out."}
	case 529:
		return apiError{Type: "overloaded_error", Message: "Overloaded"}
	}
	if status >= 500 {
		return apiError{Type: "api_error", Message: "Internal server error"}
	}
	return apiError{Type: "invalid_request_error", Message: http.StatusText(status)}
}

// failure follows Anthropic's documented errors (docs.claude.com/en/api/errors).
func (a anthropicAPI) failure(name string, _ chatRequest, retryDelay time.Duration) (int, apiError) {
	switch name {
	case FailureRateLimited:
		// Anthropic sends retry-after with every 429.
		e := a.defaultError(http.StatusTooManyRequests)
		e.RetryAfter = max(retryDelay, time.Second)
		return http.StatusTooManyRequests, e
	case FailureQuota:
		return http.StatusBadRequest, apiError{Type: "invalid_request_error",
			Message: "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}
	case FailureRequestTooLarge:
		return http.StatusRequestEntityTooLarge, a.defaultError(http.StatusRequestEntityTooLarge)
	case FailureUnauthorized:
		return http.StatusUnauthorized, a.defaultError(http.StatusUnauthorized)
	case FailureForbidden, FailureRegion:
		return http.StatusForbidden, a.defaultError(http.StatusForbidden)
	}
	return 529, a.defaultError(529)
}

// anthropicErrorBody is {"type":"error","error":{"type","message"},"request_id"}.
type anthropicErrorBody struct {
	Type      string               `json:"type"`
	Error     anthropicErrorObject `json:"error"`
	RequestID string               `json:"request_id"`
}

type anthropicErrorObject struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

func (anthropicAPI) errorBody(requestID string, _ int, e apiError) any {
	return anthropicErrorBody{
		Type:      "error",
		Error:     anthropicErrorObject{Type: e.Type, Message: e.Message},
		RequestID: requestID,
	}
}

// rateLimitHeaders writes Anthropic's anthropic-ratelimit-* headers, resets as RFC
// 3339 times; the token count goes to tokens, input-tokens and output-tokens alike.
func (anthropicAPI) rateLimitHeaders(h http.Header, rl RateLimit, now time.Time) {
	reset := now.Add(rl.Reset).UTC().Format(time.RFC3339)
	set := func(limit string, left *int64) {
		if left == nil {
			return
		}
		h.Set("anthropic-ratelimit-"+limit+"-remaining", strconv.FormatInt(*left, 10))
		h.Set("anthropic-ratelimit-"+limit+"-reset", reset)
	}
	set("requests", rl.RemainingRequests)
	for _, limit := range []string{"tokens", "input-tokens", "output-tokens"} {
		set(limit, rl.RemainingTokens)
	}
}

type anthropicTextBlock struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type anthropicUsage struct {
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
}

type anthropicMessage struct {
	ID           string               `json:"id"`
	Type         string               `json:"type"`
	Role         string               `json:"role"`
	Model        string               `json:"model"`
	Content      []anthropicTextBlock `json:"content"`
	StopReason   *string              `json:"stop_reason"`
	StopSequence *string              `json:"stop_sequence"`
	Usage        anthropicUsage       `json:"usage"`
}

// The stream events, in the order Anthropic sends them.
type (
	anthropicMessageStart struct {
		Type    string           `json:"type"`
		Message anthropicMessage `json:"message"`
	}
	anthropicBlockStart struct {
		Type         string             `json:"type"`
		Index        int                `json:"index"`
		ContentBlock anthropicTextBlock `json:"content_block"`
	}
	anthropicBlockDelta struct {
		Type  string         `json:"type"`
		Index int            `json:"index"`
		Delta anthropicDelta `json:"delta"`
	}
	anthropicDelta struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	anthropicBlockStop struct {
		Type  string `json:"type"`
		Index int    `json:"index"`
	}
	anthropicMessageDelta struct {
		Type  string `json:"type"`
		Delta struct {
			StopReason   string  `json:"stop_reason"`
			StopSequence *string `json:"stop_sequence"`
		} `json:"delta"`
		Usage struct {
			OutputTokens int `json:"output_tokens"`
		} `json:"usage"`
	}
	anthropicMessageStop struct {
		Type string `json:"type"`
	}
)

func (anthropicAPI) writeReply(w http.ResponseWriter, requestID string, req chatRequest) {
	msg := anthropicMessage{
		ID:    "msg_" + strings.TrimPrefix(requestID, "req_"),
		Type:  "message",
		Role:  "assistant",
		Model: modelOr(req.Model, "claude-mock"),
	}
	if !req.Stream {
		stop := "end_turn"
		msg.Content = []anthropicTextBlock{{Type: "text", Text: ReplyText}}
		msg.StopReason = &stop
		msg.Usage = anthropicUsage{InputTokens: 1, OutputTokens: len(replyPieces)}
		writeJSON(w, http.StatusOK, msg)
		return
	}

	sse := startSSE(w)
	msg.Content = []anthropicTextBlock{}
	msg.Usage = anthropicUsage{InputTokens: 1, OutputTokens: 1}
	type event struct {
		name string
		data any
	}
	events := []event{
		{"message_start", anthropicMessageStart{Type: "message_start", Message: msg}},
		{"content_block_start", anthropicBlockStart{Type: "content_block_start", ContentBlock: anthropicTextBlock{Type: "text"}}},
	}
	for _, piece := range replyPieces {
		events = append(events, event{"content_block_delta", anthropicBlockDelta{
			Type:  "content_block_delta",
			Delta: anthropicDelta{Type: "text_delta", Text: piece},
		}})
	}
	var msgDelta anthropicMessageDelta
	msgDelta.Type = "message_delta"
	msgDelta.Delta.StopReason = "end_turn"
	msgDelta.Usage.OutputTokens = len(replyPieces)
	events = append(events,
		event{"content_block_stop", anthropicBlockStop{Type: "content_block_stop"}},
		event{"message_delta", msgDelta},
		event{"message_stop", anthropicMessageStop{Type: "message_stop"}},
	)
	for _, ev := range events {
		if sse.jsonEvent(ev.name, ev.data) != nil {
			return // the client went away; there is no one to tell
		}
	}
}
