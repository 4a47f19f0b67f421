package sdktest_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	openaioption "github.com/openai/openai-go/v3/option"
	"google.golang.org/genai"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// httpHeaders adapts an http.Header (and a request's path) to providers.Headers, as
// extproc's view of Envoy's header map does.
type httpHeaders struct {
	h    http.Header
	path string
}

func (h httpHeaders) Get(name string) string {
	if name == ":path" {
		return h.path
	}
	return h.h.Get(name)
}

// sdkRequest is what an SDK sent.
type sdkRequest struct {
	path    string
	headers httpHeaders
}

// serveRecording answers every request with resp and records it.
func serveRecording(t *testing.T, resp providers.Response) (*httptest.Server, func() []sdkRequest) {
	t.Helper()
	var mu sync.Mutex
	var got []sdkRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, sdkRequest{path: r.URL.RequestURI(), headers: httpHeaders{r.Header.Clone(), r.URL.RequestURI()}})
		mu.Unlock()
		for _, h := range resp.Headers {
			w.Header().Set(h.Name, h.Value)
		}
		w.WriteHeader(resp.Status)
		_, _ = w.Write(resp.Body)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []sdkRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]sdkRequest(nil), got...)
	}
}

func TestGeminiSDKReadsExhaustion(t *testing.T) {
	wantStatus := map[int]string{429: "RESOURCE_EXHAUSTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE"}
	for _, tc := range exhaustionCases() {
		t.Run(tc.name, func(t *testing.T) {
			srv, requests := serveRecording(t, providers.ExhaustedError(providers.Gemini{}, tc.err, "req-1"))
			one := int32(1)
			client, err := genai.NewClient(t.Context(), &genai.ClientConfig{
				APIKey: "client-placeholder", Backend: genai.BackendGeminiAPI,
				HTTPOptions: genai.HTTPOptions{BaseURL: srv.URL, RetryOptions: &genai.HTTPRetryOptions{Attempts: &one}},
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = client.Models.GenerateContent(t.Context(), "gemini-2.0-flash", genai.Text("hi"), nil)
			var apiErr genai.APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v (%T), want genai.APIError", err, err)
			}
			if apiErr.Code != tc.wantStatus || apiErr.Status != wantStatus[tc.wantStatus] || apiErr.Message != tc.err.Error() {
				t.Errorf("got code %d status %q message %q", apiErr.Code, apiErr.Status, apiErr.Message)
			}
			if tc.wantStatus == 429 && !hasRetryDelay(apiErr.Details, "7s") {
				t.Errorf("details %v carry no RetryInfo retryDelay 7s", apiErr.Details)
			}

			// The request the SDK sent is one the provider reads correctly.
			reqs := requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			p := providers.Gemini{}
			if got := p.ClientCredential(reqs[0].headers); got != "client-placeholder" {
				t.Errorf("ClientCredential of the SDK's request = %q", got)
			}
			if got := p.Model(reqs[0].path); got != "gemini-2.0-flash" {
				t.Errorf("Model(%q) = %q", reqs[0].path, got)
			}
		})
	}
}

func hasRetryDelay(details []map[string]any, want string) bool {
	for _, d := range details {
		if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo" && d["retryDelay"] == want {
			return true
		}
	}
	return false
}

func TestAzureSDKReadsExhaustion(t *testing.T) {
	wantCode := map[int]string{429: "429", 502: "upstream_keys_rejected", 503: "no_keys_available"}
	for _, tc := range exhaustionCases() {
		t.Run(tc.name, func(t *testing.T) {
			srv, requests := serveRecording(t, providers.ExhaustedError(providers.AzureOpenAI{}, tc.err, "req-1"))
			client := openai.NewClient(
				azure.WithEndpoint(srv.URL, "2024-10-21"),
				azure.WithAPIKey("client-placeholder"),
				azure.WithUnsafeAllowHTTP(), // the test server is loopback plain HTTP
				openaioption.WithMaxRetries(0),
			)
			_, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
				Model:    "my-gpt4o-deployment",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
			})
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v, want *openai.Error", err)
			}
			if apiErr.StatusCode != tc.wantStatus || apiErr.Code != wantCode[tc.wantStatus] {
				t.Errorf("got status %d code %q", apiErr.StatusCode, apiErr.Code)
			}
			if !strings.HasPrefix(apiErr.Message, tc.err.Error()) {
				t.Errorf("message = %q, want it to start with %q", apiErr.Message, tc.err.Error())
			}
			if tc.wantStatus == 429 && !strings.Contains(apiErr.Message, "Please retry after 7 seconds.") {
				t.Errorf("message %q lacks Azure's retry-after sentence", apiErr.Message)
			}
			checkRetryAfter(t, apiErr.Response, tc.wantStatus)

			reqs := requests()
			p := providers.AzureOpenAI{}
			if got := p.ClientCredential(reqs[0].headers); got != "client-placeholder" {
				t.Errorf("ClientCredential of the SDK's request = %q", got)
			}
			if got := p.Model(reqs[0].path); got != "my-gpt4o-deployment" {
				t.Errorf("Model(%q) = %q, want the deployment", reqs[0].path, got)
			}
		})
	}
}

func TestOpenAICompatibleSDKReadsExhaustion(t *testing.T) {
	wantCode := map[int]string{429: "rate_limit_exceeded", 502: "upstream_keys_rejected", 503: "no_keys_available"}
	groq := compatible(t, "groq")
	for _, tc := range exhaustionCases() {
		t.Run(tc.name, func(t *testing.T) {
			srv, requests := serveRecording(t, providers.ExhaustedError(groq, tc.err, "req-1"))
			client := openai.NewClient(openaioption.WithBaseURL(srv.URL+"/groq/openai/v1"),
				openaioption.WithAPIKey("client-placeholder"), openaioption.WithMaxRetries(0))
			_, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
				Model:    "llama-3.3-70b-versatile",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
			})
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v, want *openai.Error", err)
			}
			if apiErr.StatusCode != tc.wantStatus || apiErr.Code != wantCode[tc.wantStatus] || apiErr.Message != tc.err.Error() {
				t.Errorf("got status %d code %q message %q", apiErr.StatusCode, apiErr.Code, apiErr.Message)
			}
			checkRetryAfter(t, apiErr.Response, tc.wantStatus)
			if got := groq.ClientCredential(requests()[0].headers); got != "client-placeholder" {
				t.Errorf("ClientCredential of the SDK's request = %q", got)
			}
		})
	}
}

// exhaustionCases are the three exhaustion answers, as the pool reports them.
func exhaustionCases() []struct {
	name       string
	err        *keypool.ExhaustedError
	wantStatus int
} {
	return []struct {
		name       string
		err        *keypool.ExhaustedError
		wantStatus int
	}{
		{"rate limited", &keypool.ExhaustedError{Pool: "main", Kind: keypool.ExhaustedRateLimited, RetryAfter: 7 * time.Second, Keys: 3}, 429},
		{"auth failed", &keypool.ExhaustedError{Pool: "main", Kind: keypool.ExhaustedAuthFailed, Keys: 3}, 502},
		{"unavailable", &keypool.ExhaustedError{Pool: "main", Kind: keypool.ExhaustedUnavailable, Keys: 3}, 503},
	}
}

// serve answers every request with resp.
func serve(t *testing.T, resp providers.Response) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for _, h := range resp.Headers {
			w.Header().Set(h.Name, h.Value)
		}
		w.WriteHeader(resp.Status)
		_, _ = w.Write(resp.Body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestOpenAISDKReadsExhaustion(t *testing.T) {
	wantType := map[int]string{429: "requests", 502: "server_error", 503: "server_error"}
	wantCode := map[int]string{429: "rate_limit_exceeded", 502: "upstream_keys_rejected", 503: "no_keys_available"}
	for _, tc := range exhaustionCases() {
		t.Run(tc.name, func(t *testing.T) {
			resp := providers.ExhaustedError(providers.OpenAI{}, tc.err, "req-1")
			srv := serve(t, resp)
			client := openai.NewClient(openaioption.WithBaseURL(srv.URL), openaioption.WithAPIKey("placeholder"),
				openaioption.WithMaxRetries(0))
			_, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
				Model:    openai.ChatModelGPT4o,
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
			})
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v, want *openai.Error", err)
			}
			if apiErr.StatusCode != tc.wantStatus || apiErr.Type != wantType[tc.wantStatus] || apiErr.Code != wantCode[tc.wantStatus] {
				t.Errorf("got status %d type %q code %q", apiErr.StatusCode, apiErr.Type, apiErr.Code)
			}
			if apiErr.Message != tc.err.Error() {
				t.Errorf("message = %q, want %q", apiErr.Message, tc.err.Error())
			}
			checkRetryAfter(t, apiErr.Response, tc.wantStatus)
		})
	}
}

func TestAnthropicSDKReadsExhaustion(t *testing.T) {
	wantType := map[int]string{429: "rate_limit_error", 502: "api_error", 503: "api_error"}
	for _, tc := range exhaustionCases() {
		t.Run(tc.name, func(t *testing.T) {
			resp := providers.ExhaustedError(providers.Anthropic{}, tc.err, "req-1")
			srv := serve(t, resp)
			client := anthropic.NewClient(anthropicoption.WithBaseURL(srv.URL), anthropicoption.WithAPIKey("placeholder"),
				anthropicoption.WithMaxRetries(0))
			_, err := client.Messages.New(context.Background(), anthropic.MessageNewParams{
				Model:     anthropic.ModelClaudeSonnet4_5,
				MaxTokens: 16,
				Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
			})
			var apiErr *anthropic.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v, want *anthropic.Error", err)
			}
			if apiErr.StatusCode != tc.wantStatus || string(apiErr.Type()) != wantType[tc.wantStatus] {
				t.Errorf("got status %d type %q", apiErr.StatusCode, apiErr.Type())
			}
			if apiErr.Message != tc.err.Error() || apiErr.RequestID != "req-1" {
				t.Errorf("got message %q request id %q", apiErr.Message, apiErr.RequestID)
			}
			checkRetryAfter(t, apiErr.Response, tc.wantStatus)
		})
	}
}

func checkRetryAfter(t *testing.T, resp *http.Response, status int) {
	t.Helper()
	got := resp.Header.Get("Retry-After")
	if status == 429 && got != "7" {
		t.Errorf("Retry-After = %q, want 7", got)
	}
	if status != 429 && got != "" {
		t.Errorf("status %d carries Retry-After %q", status, got)
	}
}

func compatible(t testing.TB, preset string) providers.Provider {
	t.Helper()
	p, err := providers.Build(providers.Spec{Name: providers.NameOpenAICompatible,
		Compatible: providers.CompatibleOptions{Preset: preset}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
