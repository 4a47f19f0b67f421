package mockprovider

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// azureAPI imitates Azure OpenAI: POST /openai/deployments/{deployment}/chat/completions
// (the deployment names the model) and the v1 API's /openai/v1/chat/completions, with
// OpenAI's replies and Azure's error bodies {"error":{"code","message"}}.
type azureAPI struct{ openAIAPI }

func (azureAPI) provider() Provider { return AzureOpenAI }

// credential reads api-key, else an Entra ID bearer token.
func (azureAPI) credential(r *http.Request) string {
	if key := strings.TrimSpace(r.Header.Get("Api-Key")); key != "" {
		return key
	}
	return bearerToken(r.Header)
}

func (azureAPI) fromPath(r *http.Request, req *chatRequest) {
	if d := r.PathValue("deployment"); d != "" {
		req.Model = d
	}
}

func (azureAPI) requestIDHeader() string { return "apim-request-id" }

func (azureAPI) missingCredential() (int, apiError) {
	return http.StatusUnauthorized, apiError{Code: "401",
		Message: "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API."}
}

func (a azureAPI) defaultError(status int) apiError {
	switch status {
	case http.StatusUnauthorized:
		return apiError{Code: "401", Message: "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}
	case http.StatusNotFound:
		return apiError{Code: "DeploymentNotFound", Message: "The API deployment for this resource does not exist."}
	case http.StatusTooManyRequests:
		return apiError{Code: "429", Message: "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded call rate limit of your current OpenAI S0 pricing tier."}
	}
	e := a.openAIAPI.defaultError(status)
	e.Code = strconv.Itoa(status)
	return e
}

func (a azureAPI) failure(name string, req chatRequest, retryDelay time.Duration) (int, apiError) {
	switch name {
	case FailureRateLimited:
		secs := max(int64((retryDelay+time.Second-1)/time.Second), 1)
		return http.StatusTooManyRequests, apiError{Code: "429",
			Message: "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after " +
				strconv.FormatInt(secs, 10) + " seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."}
	case FailureQuota:
		return http.StatusTooManyRequests, apiError{Code: "insufficient_quota", Message: "The current subscription has exceeded its quota for this resource."}
	case FailureUnauthorized:
		return http.StatusUnauthorized, a.defaultError(http.StatusUnauthorized)
	case FailureForbidden:
		return http.StatusForbidden, apiError{Code: "403", Message: "The principal does not have access to this deployment."}
	}
	return a.openAIAPI.failure(name, req, retryDelay)
}

// azureErrorBody is {"error":{"code","message"}}, codes as strings ("429").
type azureErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Type    string `json:"type,omitempty"`
	} `json:"error"`
}

func (azureAPI) errorBody(_ string, status int, e apiError) any {
	var body azureErrorBody
	body.Error.Code, body.Error.Message, body.Error.Type = e.Code, e.Message, e.Type
	if body.Error.Code == "" {
		body.Error.Code = strconv.Itoa(status)
	}
	return body
}

// rateLimitHeaders writes Azure's remaining headers; Azure sends no resets.
func (azureAPI) rateLimitHeaders(h http.Header, rl RateLimit, _ time.Time) {
	for kind, left := range map[string]*int64{"requests": rl.RemainingRequests, "tokens": rl.RemainingTokens} {
		if left != nil {
			h.Set("x-ratelimit-remaining-"+kind, strconv.FormatInt(*left, 10))
		}
	}
}
