package providers_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaioption "github.com/openai/openai-go/v3/option"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

type headerMap map[string]string

func (h headerMap) Get(name string) string { return h[name] }

func TestNew(t *testing.T) {
	for _, name := range providers.Names() {
		p, err := providers.New(name)
		if err != nil || p.Name() != name {
			t.Errorf("New(%q) = %v, %v", name, p, err)
		}
	}
	if _, err := providers.New("gemini-pro-max"); err == nil || !strings.Contains(err.Error(), "unknown provider") {
		t.Errorf("New(unknown) err = %v", err)
	}
}

func TestFailureReason(t *testing.T) {
	tests := []struct {
		status int
		want   keypool.Reason
		ok     bool
	}{
		{401, keypool.ReasonUnauthorized, true},
		{403, keypool.ReasonForbidden, true},
		{429, keypool.ReasonRateLimited, true},
		{200, "", false}, {400, "", false}, {404, "", false},
		{500, "", false}, {502, "", false}, {503, "", false},
		{529, "", false}, // Anthropic overloaded: provider-wide, not the key
	}
	for _, tt := range tests {
		if got, ok := providers.FailureReason(tt.status); got != tt.want || ok != tt.ok {
			t.Errorf("FailureReason(%d) = %q, %v; want %q, %v", tt.status, got, ok, tt.want, tt.ok)
		}
	}
	for _, s := range providers.DefaultFailureStatuses() {
		if _, ok := providers.FailureReason(s); !ok {
			t.Errorf("default failure status %d has no reason", s)
		}
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

func TestErrorBodiesEscapeMessages(t *testing.T) {
	msg := `pool "a\"b" </script> ` + "\n\x00"
	for _, p := range allProviders(t) {
		resp := p.ErrorResponse(providers.ErrorInfo{Status: 500, Kind: providers.ErrorMisconfigured, Message: msg})
		var body struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(resp.Body, &body); err != nil || body.Error.Message != msg {
			t.Errorf("%s: body %s does not carry the message intact: %v", p.Name(), resp.Body, err)
		}
	}
}
