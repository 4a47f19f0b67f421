package mockprovider

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// geminiAPI imitates the Gemini API (Google AI Studio):
// POST /{version}/models/{model}:generateContent answers one GenerateContentResponse,
// …:streamGenerateContent answers several, as server-sent events with ?alt=sse (what
// google.golang.org/genai asks for) or as one JSON array without.
type geminiAPI struct{}

func (geminiAPI) provider() Provider { return Gemini }

// credential reads x-goog-api-key, else the ?key= query parameter, as the API does.
func (geminiAPI) credential(r *http.Request) string {
	if key := strings.TrimSpace(r.Header.Get("X-Goog-Api-Key")); key != "" {
		return key
	}
	return strings.TrimSpace(r.URL.Query().Get("key"))
}

// fromPath reads the model and the method from the last path segment.
func (geminiAPI) fromPath(r *http.Request, req *chatRequest) {
	model, method, _ := strings.Cut(r.PathValue("action"), ":")
	req.Model = model
	req.Stream = method == "streamGenerateContent"
	req.sse = r.URL.Query().Get("alt") == "sse"
}

func (geminiAPI) requestIDHeader() string { return "x-request-id" }

func (geminiAPI) missingCredential() (int, apiError) {
	return http.StatusForbidden, apiError{Type: "PERMISSION_DENIED",
		Message: "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API."}
}

// defaultError uses Google's canonical status names (google.rpc.Code) by HTTP status.
func (geminiAPI) defaultError(status int) apiError {
	switch status {
	case http.StatusBadRequest:
		return apiError{Type: "INVALID_ARGUMENT", Message: "Request contains an invalid argument."}
	case http.StatusUnauthorized:
		return apiError{Type: "UNAUTHENTICATED", Message: "Request had invalid authentication credentials."}
	case http.StatusForbidden:
		return apiError{Type: "PERMISSION_DENIED", Message: "The caller does not have permission"}
	case http.StatusNotFound:
		return apiError{Type: "NOT_FOUND", Message: "Requested entity was not found."}
	case http.StatusTooManyRequests:
		return apiError{Type: "RESOURCE_EXHAUSTED", Message: "Resource has been exhausted (e.g. check quota)."}
	case http.StatusServiceUnavailable:
		return apiError{Type: "UNAVAILABLE", Message: "The model is overloaded. Please try again later."}
	case http.StatusGatewayTimeout:
		return apiError{Type: "DEADLINE_EXCEEDED", Message: "Deadline expired before operation could complete."}
	}
	if status >= 500 {
		return apiError{Type: "INTERNAL", Message: "An internal error has occurred."}
	}
	return apiError{Type: "FAILED_PRECONDITION", Message: http.StatusText(status)}
}

// failure follows ai.google.dev/gemini-api/docs/troubleshooting and the bodies the API
// sends: a bad key is a 400, quotas are 429s whose details name the quota and the wait.
func (a geminiAPI) failure(name string, req chatRequest, retryDelay time.Duration) (int, apiError) {
	if retryDelay == 0 {
		retryDelay = time.Second
	}
	quota := func(id string) apiError {
		return apiError{Type: "RESOURCE_EXHAUSTED", RetryDelay: retryDelay, QuotaID: id, Model: req.Model,
			Message: "You exceeded your current quota, please check your plan and billing details."}
	}
	switch name {
	case FailureRateLimited:
		return http.StatusTooManyRequests, quota("GenerateRequestsPerMinutePerProjectPerModel-FreeTier")
	case FailureQuota:
		return http.StatusTooManyRequests, quota("GenerateRequestsPerDayPerProjectPerModel-FreeTier")
	case FailureRequestTooLarge:
		return http.StatusBadRequest, apiError{Type: "INVALID_ARGUMENT",
			Message: "The input token count exceeds the maximum number of tokens allowed."}
	case FailureUnauthorized:
		return http.StatusBadRequest, apiError{Type: "INVALID_ARGUMENT", Code: "API_KEY_INVALID",
			Message: "API key not valid. Please pass a valid API key."}
	case FailureForbidden:
		return http.StatusForbidden, a.defaultError(http.StatusForbidden)
	case FailureRegion:
		return http.StatusBadRequest, apiError{Type: "FAILED_PRECONDITION", Message: "User location is not supported for the API use."}
	}
	return http.StatusServiceUnavailable, a.defaultError(http.StatusServiceUnavailable)
}

// geminiErrorBody is Google's {"error":{"code","message","status","details"}}.
type geminiErrorBody struct {
	Error geminiErrorObject `json:"error"`
}

type geminiErrorObject struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Status  string         `json:"status"`
	Details []geminiDetail `json:"details,omitempty"`
}

// geminiDetail is one google.rpc detail: ErrorInfo, QuotaFailure or RetryInfo.
type geminiDetail struct {
	Type       string            `json:"@type"`
	Reason     string            `json:"reason,omitempty"`
	Domain     string            `json:"domain,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	Violations []geminiViolation `json:"violations,omitempty"`
	RetryDelay string            `json:"retryDelay,omitempty"`
}

type geminiViolation struct {
	QuotaMetric     string            `json:"quotaMetric"`
	QuotaID         string            `json:"quotaId"`
	QuotaDimensions map[string]string `json:"quotaDimensions,omitempty"`
	QuotaValue      string            `json:"quotaValue"`
}

func (geminiAPI) errorBody(_ string, status int, e apiError) any {
	body := geminiErrorBody{Error: geminiErrorObject{Code: status, Message: e.Message, Status: e.Type}}
	if e.Code != "" {
		body.Error.Details = append(body.Error.Details, geminiDetail{
			Type: "type.googleapis.com/google.rpc.ErrorInfo", Reason: e.Code, Domain: "googleapis.com",
			Metadata: map[string]string{"service": "generativelanguage.googleapis.com"},
		})
	}
	if e.QuotaID != "" {
		body.Error.Details = append(body.Error.Details, geminiDetail{
			Type: "type.googleapis.com/google.rpc.QuotaFailure",
			Violations: []geminiViolation{{
				QuotaMetric: "generativelanguage.googleapis.com/generate_content_free_tier_requests",
				QuotaID:     e.QuotaID, QuotaDimensions: map[string]string{"location": "global", "model": e.Model}, QuotaValue: "15",
			}},
		})
	}
	if e.RetryDelay > 0 {
		body.Error.Details = append(body.Error.Details, geminiDetail{
			Type:       "type.googleapis.com/google.rpc.RetryInfo",
			RetryDelay: strconv.FormatFloat(e.RetryDelay.Seconds(), 'f', -1, 64) + "s",
		})
	}
	return body
}

// rateLimitHeaders: Gemini sends no rate-limit headers.
func (geminiAPI) rateLimitHeaders(http.Header, RateLimit, time.Time) {}

type geminiPart struct {
	Text string `json:"text"`
}

type geminiContent struct {
	Parts []geminiPart `json:"parts"`
	Role  string       `json:"role"`
}

type geminiCandidate struct {
	Content      geminiContent `json:"content"`
	FinishReason string        `json:"finishReason,omitempty"`
	Index        int           `json:"index"`
}

type geminiUsage struct {
	PromptTokenCount     int `json:"promptTokenCount"`
	CandidatesTokenCount int `json:"candidatesTokenCount"`
	TotalTokenCount      int `json:"totalTokenCount"`
}

type geminiResponse struct {
	Candidates    []geminiCandidate `json:"candidates"`
	UsageMetadata *geminiUsage      `json:"usageMetadata,omitempty"`
	ModelVersion  string            `json:"modelVersion"`
	ResponseID    string            `json:"responseId"`
}

func (geminiAPI) writeReply(w http.ResponseWriter, requestID string, req chatRequest) {
	usage := &geminiUsage{PromptTokenCount: 1, CandidatesTokenCount: len(replyPieces), TotalTokenCount: 1 + len(replyPieces)}
	chunk := func(text, finish string, u *geminiUsage) geminiResponse {
		return geminiResponse{
			Candidates:    []geminiCandidate{{Content: geminiContent{Parts: []geminiPart{{Text: text}}, Role: "model"}, FinishReason: finish}},
			UsageMetadata: u, ModelVersion: req.Model, ResponseID: requestID,
		}
	}
	if !req.Stream {
		writeJSON(w, http.StatusOK, chunk(ReplyText, "STOP", usage))
		return
	}
	var chunks []geminiResponse
	for i, piece := range replyPieces {
		if i == len(replyPieces)-1 {
			chunks = append(chunks, chunk(piece, "STOP", usage))
		} else {
			chunks = append(chunks, chunk(piece, "", nil))
		}
	}
	if !req.sse {
		writeJSON(w, http.StatusOK, chunks) // the streamed JSON array, sent at once
		return
	}
	sse := startSSE(w)
	for _, c := range chunks {
		if sse.jsonEvent("", c) != nil {
			return // the client went away; there is no one to tell
		}
	}
}
