package mockprovider_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	openaioption "github.com/openai/openai-go/v3/option"
	"google.golang.org/genai"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

func geminiClient(t *testing.T, baseURL, key string) *genai.Client {
	t.Helper()
	one := int32(1)
	c, err := genai.NewClient(t.Context(), &genai.ClientConfig{
		APIKey: key, Backend: genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: baseURL, RetryOptions: &genai.HTTPRetryOptions{Attempts: &one}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGeminiSDKGetsTheMockReply(t *testing.T) {
	mock, srv := newMock(t)
	client := geminiClient(t, srv.URL, "test-gemini-key-1")

	resp, err := client.Models.GenerateContent(t.Context(), "gemini-2.0-flash", genai.Text("hi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Text(); got != mockprovider.ReplyText {
		t.Errorf("text = %q, want %q", got, mockprovider.ReplyText)
	}

	var streamed strings.Builder
	for chunk, err := range client.Models.GenerateContentStream(t.Context(), "gemini-2.5-pro", genai.Text("hi"), nil) {
		if err != nil {
			t.Fatal(err)
		}
		streamed.WriteString(chunk.Text())
	}
	if streamed.String() != mockprovider.ReplyText {
		t.Errorf("streamed text = %q, want %q", streamed.String(), mockprovider.ReplyText)
	}

	recs := mock.Requests()
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	if r := recs[0]; r.Provider != mockprovider.Gemini || r.Key != "test-gemini-key-1" || r.Model != "gemini-2.0-flash" || r.Stream {
		t.Errorf("generateContent record = %+v", r)
	}
	if r := recs[1]; r.Model != "gemini-2.5-pro" || !r.Stream || !strings.Contains(r.Query, "alt=sse") {
		t.Errorf("streamGenerateContent record = %+v", r)
	}
}

func TestGeminiReadsAQueryKeyAndAnswersWithoutOne(t *testing.T) {
	mock, srv := newMock(t)
	path := "/v1beta/models/gemini-2.0-flash:generateContent"
	body := `{"contents":[{"parts":[{"text":"hi"}]}]}`

	status, _, _ := post(t, srv, path+"?key=test-query-key&alt=json", body, nil)
	if status != 200 {
		t.Errorf("?key= request: status %d, want 200", status)
	}
	status, _, got := post(t, srv, path, body, nil)
	var e struct {
		Error struct {
			Status string `json:"status"`
		} `json:"error"`
	}
	if status != 403 || json.Unmarshal([]byte(got), &e) != nil || e.Error.Status != "PERMISSION_DENIED" {
		t.Errorf("keyless request: status %d body %s, want Gemini's 403 PERMISSION_DENIED", status, got)
	}
	// Without alt=sse a stream is one JSON array of responses.
	status, _, got = post(t, srv, "/v1beta/models/gemini-2.0-flash:streamGenerateContent?key=k", body, nil)
	var chunks []struct {
		Candidates []struct {
			Content struct {
				Parts []struct {
					Text string `json:"text"`
				} `json:"parts"`
			} `json:"content"`
		} `json:"candidates"`
	}
	if err := json.Unmarshal([]byte(got), &chunks); status != 200 || err != nil || len(chunks) < 2 {
		t.Fatalf("stream without alt=sse: status %d, %d chunks, %v", status, len(chunks), err)
	}
	var text strings.Builder
	for _, c := range chunks {
		text.WriteString(c.Candidates[0].Content.Parts[0].Text)
	}
	if text.String() != mockprovider.ReplyText {
		t.Errorf("JSON-array stream text %q, want %q", text.String(), mockprovider.ReplyText)
	}
	recs := mock.Requests()
	if recs[0].Key != "test-query-key" || recs[0].QueryKey != "test-query-key" || recs[0].Query != "key=test-query-key&alt=json" {
		t.Errorf("?key= record = %+v", recs[0])
	}
}

func TestAzureSDKGetsTheMockReplyAndNamesTheDeployment(t *testing.T) {
	mock, srv := newMock(t)
	client := openai.NewClient(azure.WithEndpoint(srv.URL, "2024-10-21"), azure.WithAPIKey("test-azure-key-1"),
		azure.WithUnsafeAllowHTTP(), openaioption.WithMaxRetries(0))
	resp, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: "gpt4o-prod", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Choices[0].Message.Content != mockprovider.ReplyText {
		t.Errorf("reply %q", resp.Choices[0].Message.Content)
	}
	r := mock.Requests()[0]
	if r.Provider != mockprovider.AzureOpenAI || r.Key != "test-azure-key-1" || r.Model != "gpt4o-prod" ||
		r.Path != "/openai/deployments/gpt4o-prod/chat/completions" {
		t.Errorf("record = %+v", r)
	}
}

func TestCompatibleBasePathsAreServed(t *testing.T) {
	for _, base := range []string{"/openai/v1", "/api/v1", "/inference/v1", "/groq/openai/v1"} {
		mock, srv := newMock(t)
		client := openai.NewClient(openaioption.WithBaseURL(srv.URL+base), openaioption.WithAPIKey("test-compat-key"),
			openaioption.WithMaxRetries(0))
		resp, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Model: "llama-3.3-70b", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		})
		if err != nil {
			t.Errorf("%s: %v", base, err)
			continue
		}
		if r := mock.Requests()[0]; r.Provider != mockprovider.OpenAICompatible || r.Key != "test-compat-key" ||
			resp.Choices[0].Message.Content != mockprovider.ReplyText {
			t.Errorf("%s: record %+v", base, r)
		}
	}
}

func TestBehaviorPerModel(t *testing.T) {
	mock, srv := newMock(t)
	mustSet(t, mock, "test-key-1", mockprovider.Behavior{Models: map[string]mockprovider.Behavior{
		"model-a": {Failure: mockprovider.FailureRateLimited},
	}})
	auth := map[string]string{"Authorization": "Bearer test-key-1"}
	for model, want := range map[string]int{"model-a": 429, "model-b": 200, "": 200} {
		status, _, _ := post(t, srv, openAIPath, `{"model":"`+model+`","messages":[]}`, auth)
		if status != want {
			t.Errorf("model %q: status %d, want %d", model, status, want)
		}
	}
	// Gemini names the model in the path.
	mustSet(t, mock, "test-gemini-key", mockprovider.Behavior{Models: map[string]mockprovider.Behavior{
		"gemini-2.5-pro": {Failure: mockprovider.FailureQuota},
	}})
	gauth := map[string]string{"x-goog-api-key": "test-gemini-key"}
	if status, _, _ := post(t, srv, "/v1beta/models/gemini-2.5-pro:generateContent", `{}`, gauth); status != 429 {
		t.Errorf("gemini-2.5-pro: status %d, want 429", status)
	}
	if status, _, _ := post(t, srv, "/v1beta/models/gemini-2.0-flash:generateContent", `{}`, gauth); status != 200 {
		t.Errorf("gemini-2.0-flash: status %d, want 200", status)
	}
}

// TestFailuresClassifyAsTheirClass closes the loop: the documented failure bodies the
// mock sends are classified by package providers as the class they stand for.
func TestFailuresClassifyAsTheirClass(t *testing.T) {
	groq, err := providers.Build(providers.Spec{Name: providers.NameOpenAICompatible, Compatible: providers.CompatibleOptions{Preset: "groq"}})
	if err != nil {
		t.Fatal(err)
	}
	apis := []struct {
		name     string
		path     string
		auth     map[string]string
		provider providers.Provider
		// want maps a failure to its class; none (absent) is no key failure.
		want map[string]keypool.Class
	}{
		{"openai", openAIPath, map[string]string{"Authorization": "Bearer K"}, providers.OpenAI{}, map[string]keypool.Class{
			"rate_limited": keypool.ClassRateLimited, "quota": keypool.ClassQuota, "request_too_large": keypool.ClassRequestTooLarge,
			"unauthorized": keypool.ClassUnauthorized, "forbidden": keypool.ClassForbidden, "overloaded": keypool.ClassOverloaded}},
		{"anthropic", anthropicPath, map[string]string{"x-api-key": "K"}, providers.Anthropic{}, map[string]keypool.Class{
			"rate_limited": keypool.ClassRateLimited, "quota": keypool.ClassQuota, "request_too_large": keypool.ClassRequestTooLarge,
			"unauthorized": keypool.ClassUnauthorized, "forbidden": keypool.ClassForbidden, "region": keypool.ClassForbidden,
			"overloaded": keypool.ClassOverloaded}},
		{"gemini", "/v1beta/models/gemini-2.0-flash:generateContent", map[string]string{"x-goog-api-key": "K"}, providers.Gemini{}, map[string]keypool.Class{
			"rate_limited": keypool.ClassRateLimited, "quota": keypool.ClassRateLimited, "unauthorized": keypool.ClassUnauthorized,
			"forbidden": keypool.ClassForbidden, "overloaded": keypool.ClassOverloaded}},
		{"azure", "/openai/deployments/d/chat/completions", map[string]string{"api-key": "K"}, providers.AzureOpenAI{}, map[string]keypool.Class{
			"rate_limited": keypool.ClassRateLimited, "quota": keypool.ClassQuota, "request_too_large": keypool.ClassRequestTooLarge,
			"unauthorized": keypool.ClassUnauthorized, "forbidden": keypool.ClassForbidden, "overloaded": keypool.ClassOverloaded}},
		{"groq", "/openai/v1/chat/completions", map[string]string{"Authorization": "Bearer K"}, groq, map[string]keypool.Class{
			"rate_limited": keypool.ClassRateLimited, "quota": keypool.ClassQuota, "request_too_large": keypool.ClassRequestTooLarge,
			"unauthorized": keypool.ClassUnauthorized, "forbidden": keypool.ClassForbidden, "overloaded": keypool.ClassOverloaded}},
	}
	for _, api := range apis {
		for _, failure := range mockprovider.Failures() {
			t.Run(api.name+"/"+failure, func(t *testing.T) {
				mock, srv := newMock(t)
				mustSet(t, mock, "K", mockprovider.Behavior{Failure: failure, RetryDelay: 3 * time.Second})
				status, h, body := post(t, srv, api.path, `{"model":"m","messages":[]}`, api.auth)
				f, ok := api.provider.Classify(status, httpHeaders(h), []byte(body), time.Now())
				got := keypool.Class("")
				if ok {
					got = f.Class
				}
				if want := api.want[failure]; got != want {
					t.Errorf("status %d body %s: class %q, want %q", status, body, got, want)
				}
				if got == keypool.ClassRateLimited && failure == "rate_limited" && (!f.Hint.Known || f.Hint.After != 3*time.Second) {
					t.Errorf("rate limit hint %+v, want the 3s the body states", f.Hint)
				}
				if h.Get("Content-Length") != strconv.Itoa(len(body)) {
					t.Errorf("Content-Length %q for a %d-byte body", h.Get("Content-Length"), len(body))
				}
			})
		}
	}
}

// httpHeaders adapts http.Header to providers.Headers.
type httpHeaders http.Header

func (h httpHeaders) Get(name string) string { return http.Header(h).Get(name) }

func TestRawAndPaddedErrorBodies(t *testing.T) {
	mock, srv := newMock(t)
	auth := map[string]string{"Authorization": "Bearer test-key-1"}

	mustSet(t, mock, "test-key-1", mockprovider.Behavior{Status: 502, Body: "<html>bad gateway</html>", Headers: map[string]string{"Content-Type": "text/html"}})
	status, h, body := post(t, srv, openAIPath, chatBody, auth)
	if status != 502 || body != "<html>bad gateway</html>" || h.Get("Content-Type") != "text/html" {
		t.Errorf("raw body: status %d type %q body %q", status, h.Get("Content-Type"), body)
	}

	mustSet(t, mock, "test-key-1", mockprovider.Behavior{Failure: mockprovider.FailureQuota, BodySize: 1 << 20})
	status, h, body = post(t, srv, openAIPath, chatBody, auth)
	if status != 429 || len(body) != 1<<20 || h.Get("Content-Length") != strconv.Itoa(1<<20) || !json.Valid([]byte(body)) {
		t.Errorf("padded body: status %d, %d bytes, Content-Length %q, valid JSON %v", status, len(body), h.Get("Content-Length"), json.Valid([]byte(body)))
	}
}

func TestRateLimitHeadersInEachProvidersFormat(t *testing.T) {
	zero, left := int64(0), int64(900)
	rl := &mockprovider.RateLimit{RemainingRequests: &zero, RemainingTokens: &left, Reset: 5 * time.Second}
	tests := []struct {
		name     string
		path     string
		auth     map[string]string
		provider providers.Provider
		// wantReset is false for a provider whose headers carry no reset.
		wantReset bool
	}{
		{"openai", openAIPath, map[string]string{"Authorization": "Bearer K"}, providers.OpenAI{}, true},
		{"anthropic", anthropicPath, map[string]string{"x-api-key": "K"}, providers.Anthropic{}, true},
		{"azure", "/openai/deployments/d/chat/completions", map[string]string{"api-key": "K"}, providers.AzureOpenAI{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mock, srv := newMock(t)
			mustSet(t, mock, "K", mockprovider.Behavior{RateLimit: rl})
			status, h, _ := post(t, srv, tt.path, chatBody, tt.auth)
			hr := tt.provider.Headroom(httpHeaders(h), time.Now())
			if status != 200 || !hr.Requests.Known || hr.Requests.Left != 0 || !hr.Tokens.Known || hr.Tokens.Left != 900 {
				t.Fatalf("status %d headroom %+v", status, hr)
			}
			if tt.wantReset && (hr.Requests.Reset <= 3*time.Second || hr.Requests.Reset > 5*time.Second) {
				t.Errorf("requests reset %s, want about 5s", hr.Requests.Reset)
			}
		})
	}
}

func TestNewBehaviorFieldsRoundTripTheControlAPI(t *testing.T) {
	zero := int64(0)
	b := mockprovider.Behavior{
		Failure: mockprovider.FailureRateLimited, RetryDelay: 52 * time.Second, BodySize: 4096,
		RateLimit: &mockprovider.RateLimit{RemainingRequests: &zero, Reset: 5 * time.Second},
		Models:    map[string]mockprovider.Behavior{"a": {Status: 503, Body: "x"}},
	}
	mock, srv := newMock(t)
	c := &mockprovider.Client{BaseURL: srv.URL}
	if err := c.SetBehavior(t.Context(), "K", b); err != nil {
		t.Fatal(err)
	}
	got := mock.Behaviors()["K"]
	want, _ := json.Marshal(b)
	gotJSON, _ := json.Marshal(got)
	if !bytes.Equal(want, gotJSON) {
		t.Errorf("round trip:\n got %s\nwant %s", gotJSON, want)
	}
}

func TestNewBehaviorFieldsAreValidated(t *testing.T) {
	tests := map[string]string{
		"unknown failure":        `{"failure":"sleepy"}`,
		"failure with 200":       `{"failure":"quota","status":200}`,
		"body without an error":  `{"body":"x"}`,
		"negative body size":     `{"status":500,"body_size":-1}`,
		"huge body size":         `{"status":500,"body_size":1073741824}`,
		"bad retry delay":        `{"failure":"quota","retry_delay":"soon"}`,
		"nested models":          `{"models":{"a":{"models":{"b":{}}}}}`,
		"bad model behaviour":    `{"models":{"a":{"status":700}}}`,
		"bad rate limit reset":   `{"rate_limit":{"reset":"-1s"}}`,
		"unknown rate limit key": `{"rate_limit":{"remaining":1}}`,
	}
	for name, doc := range tests {
		_, err := mockprovider.DecodeBehaviors(strings.NewReader(`{"K":` + doc + `}`))
		if err == nil {
			t.Errorf("%s: %s accepted", name, doc)
		}
	}
	_, srv := newMock(t)
	res, err := srv.Client().Post(srv.URL+"/_mock/keys", "application/json", strings.NewReader(`{"K":{"failure":"sleepy"}}`))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	msg, _ := io.ReadAll(res.Body)
	if res.StatusCode != 400 || !strings.Contains(string(msg), "sleepy") {
		t.Errorf("control API answered %d %s", res.StatusCode, msg)
	}
	if !errors.Is(mockprovider.Behavior{Failure: "sleepy"}.Validate(), mockprovider.ErrInvalidBehavior) {
		t.Error("Validate does not wrap ErrInvalidBehavior")
	}
}
