package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	openaioption "github.com/openai/openai-go/v3/option"
	"google.golang.org/genai"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// providerCase drives one provider's pool of envoy/compose/keypool.yaml with that
// provider's official SDK.
type providerCase struct {
	pool string
	// authHeader is the header the provider reads the key from.
	authHeader string
	// chat sends one request and returns the reply text.
	chat func(ctx context.Context, tg *target, stream bool) (string, error)
	// exhaustion reads the SDK's typed error: status, the provider's own error type
	// or status name, and the wait it states.
	exhaustion func(t *testing.T, err error) (status int, kind, retryAfter string)
	// wantKind is the exhaustion's kind for a rate-limited pool.
	wantKind string
}

func providerCases() []providerCase {
	return []providerCase{
		{pool: "azure", authHeader: "Api-Key", chat: azureChat, exhaustion: openAIExhaustion, wantKind: "429"},
		{pool: "gemini", authHeader: "X-Goog-Api-Key", chat: geminiChat, exhaustion: geminiExhaustion, wantKind: "RESOURCE_EXHAUSTED"},
		{pool: "groq", authHeader: "Authorization", chat: groqChat, exhaustion: openAIExhaustion, wantKind: "rate_limit_exceeded"},
	}
}

func azureChat(ctx context.Context, tg *target, stream bool) (string, error) {
	c := openai.NewClient(
		azure.WithEndpoint(tg.url+"/azure", "2024-10-21"),
		azure.WithAPIKey(placeholderKey),
		azure.WithUnsafeAllowHTTP(), // the stand-in listens on loopback, in plain HTTP
		openaioption.WithMaxRetries(0),
		openaioption.WithRequestTimeout(30*time.Second),
	)
	return openAIChatWith(ctx, c, "gpt4o-prod", stream)
}

func groqChat(ctx context.Context, tg *target, stream bool) (string, error) {
	c := openai.NewClient(
		openaioption.WithBaseURL(tg.url+"/groq/openai/v1/"),
		openaioption.WithAPIKey(placeholderKey),
		openaioption.WithMaxRetries(0),
		openaioption.WithRequestTimeout(30*time.Second),
	)
	return openAIChatWith(ctx, c, "llama-3.3-70b-versatile", stream)
}

func openAIChatWith(ctx context.Context, c openai.Client, model string, stream bool) (string, error) {
	params := openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")},
	}
	if !stream {
		resp, err := c.Chat.Completions.New(ctx, params)
		if err != nil {
			return "", err
		}
		return resp.Choices[0].Message.Content, nil
	}
	s := c.Chat.Completions.NewStreaming(ctx, params)
	var acc openai.ChatCompletionAccumulator
	for s.Next() {
		acc.AddChunk(s.Current())
	}
	if err := s.Err(); err != nil {
		return "", err
	}
	return acc.Choices[0].Message.Content, nil
}

func geminiClient(ctx context.Context, tg *target) (*genai.Client, error) {
	one := int32(1) // SDK retries off: every retry the test sees is the proxy's
	timeout := 30 * time.Second
	return genai.NewClient(ctx, &genai.ClientConfig{
		APIKey: placeholderKey, Backend: genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: tg.url + "/gemini", Timeout: &timeout,
			RetryOptions: &genai.HTTPRetryOptions{Attempts: &one}},
	})
}

func geminiChat(ctx context.Context, tg *target, stream bool) (string, error) {
	c, err := geminiClient(ctx, tg)
	if err != nil {
		return "", err
	}
	if !stream {
		resp, err := c.Models.GenerateContent(ctx, "gemini-2.0-flash", genai.Text("hello"), nil)
		if err != nil {
			return "", err
		}
		return resp.Text(), nil
	}
	var b strings.Builder
	for chunk, err := range c.Models.GenerateContentStream(ctx, "gemini-2.0-flash", genai.Text("hello"), nil) {
		if err != nil {
			return "", err
		}
		b.WriteString(chunk.Text())
	}
	return b.String(), nil
}

func openAIExhaustion(t *testing.T, err error) (int, string, string) {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want *openai.Error", err)
	}
	return e.StatusCode, e.Code, e.Response.Header.Get("Retry-After")
}

func geminiExhaustion(t *testing.T, err error) (int, string, string) {
	t.Helper()
	var e genai.APIError
	if !errors.As(err, &e) {
		t.Fatalf("err = %v (%T), want genai.APIError", err, err)
	}
	var delay string
	for _, d := range e.Details {
		if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo" {
			delay, _ = d["retryDelay"].(string)
		}
	}
	return e.Code, e.Status, strings.TrimSuffix(delay, "s")
}

// TestProvidersFailOver: for Azure OpenAI, Gemini and an openai-compatible API, a
// request whose first key answers the provider's own 429 is served by the second key,
// through the Envoy stand-in, JSON and streamed; the provider sees only the pool's keys
// in its own auth header; and when every key is rate limited the SDK gets its typed
// error with an honest wait.
func TestProvidersFailOver(t *testing.T) {
	tg := startTarget(t)
	for _, pc := range providerCases() {
		t.Run(pc.pool, func(t *testing.T) {
			for _, stream := range []bool{false, true} {
				if err := tg.mock.Reset(testCtx(t)); err != nil {
					t.Fatal(err)
				}
				// Keys of earlier subtests may still cool: each run uses its own pool.
				tg.program(t, pc.pool, 0, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited,
					Headers: map[string]string{"Retry-After": "1"}})
				text, err := pc.chat(testCtx(t), tg, stream)
				if err != nil || text != mockprovider.ReplyText {
					t.Fatalf("stream %v: reply %q, %v; want the second key to serve", stream, text, err)
				}
				reqs, err := tg.mock.Requests(testCtx(t))
				if err != nil {
					t.Fatal(err)
				}
				if len(reqs) != 2 || reqs[0].Key != tg.keyValue(pc.pool, 0) || reqs[1].Key != tg.keyValue(pc.pool, 1) {
					t.Fatalf("stream %v: provider saw %d attempts, want key 1 then key 2", stream, len(reqs))
				}
				for _, r := range reqs {
					for name, vs := range r.CredentialHeaders {
						if name != pc.authHeader || strings.Contains(strings.Join(vs, ","), placeholderKey) {
							t.Errorf("the provider got credential header %s (the client's placeholder, or another provider's header)", name)
						}
					}
					if r.QueryKey != "" {
						t.Error("the provider got a ?key= the pool did not send")
					}
				}
				// Let key 1's one-second cooldown pass before the next run, for the
				// request's model too (the model is known: path or JSON body).
				tg.waitKeyNotCooling(t, pc.pool, 0)
			}

			// Every key rate limited: the provider's own error shape, with the wait.
			for i := range tg.keys[pc.pool] {
				tg.program(t, pc.pool, i, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited,
					Headers: map[string]string{"Retry-After": "30"}})
			}
			_, err := pc.chat(testCtx(t), tg, false)
			status, kind, wait := pc.exhaustion(t, err)
			if status != 429 || kind != pc.wantKind || wait != "30" {
				t.Errorf("exhaustion: status %d kind %q wait %q; want 429 %q 30", status, kind, wait, pc.wantKind)
			}
		})
	}
}

// TestAzureDeploymentPathReachesTheProvider: the SDK's deployment path and api-version
// go upstream as they came (the route only removes its prefix).
func TestAzureDeploymentPathReachesTheProvider(t *testing.T) {
	tg := startTarget(t)
	if _, err := azureChat(testCtx(t), tg, false); err != nil {
		t.Fatal(err)
	}
	reqs, err := tg.mock.Requests(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	r := reqs[0]
	if r.Provider != mockprovider.AzureOpenAI || r.Path != "/openai/deployments/gpt4o-prod/chat/completions" ||
		r.Query != "api-version=2024-10-21" || r.Model != "gpt4o-prod" || r.Key != tg.keyValue("azure", 0) {
		t.Errorf("provider got %s %s?%s model %q provider %q", r.Method, r.Path, r.Query, r.Model, r.Provider)
	}
}

// TestGeminiQueryKeyNeverReachesTheProvider: a client key given as ?key= on a pool that
// denies BYOK is removed from the path, the other parameters kept, and the pool's key
// sent in x-goog-api-key instead.
func TestGeminiQueryKeyNeverReachesTheProvider(t *testing.T) {
	tg := startTarget(t)
	const clientKey = "client-own-gemini-key-not-real-0123"
	url := tg.url + "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?key=" + clientKey + "&alt=sse"
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, url,
		strings.NewReader(`{"contents":[{"parts":[{"text":"hello"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "data: ") {
		t.Fatalf("status %d, body %q; want the streamed reply", resp.StatusCode, body)
	}
	reqs, err := tg.mock.Requests(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 1 {
		t.Fatalf("%d provider requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Key != tg.keyValue("gemini", 0) || r.QueryKey != "" || r.Query != "alt=sse" || !r.Stream {
		t.Errorf("provider got key of pool %v, query %q, ?key= %v, stream %v; want the pool's first key, alt=sse only",
			r.Key == tg.keyValue("gemini", 0), r.Query, r.QueryKey != "", r.Stream)
	}
	for _, vs := range r.CredentialHeaders {
		if strings.Contains(strings.Join(vs, ","), clientKey) {
			t.Error("the client's key reached the provider in a header")
		}
	}
}
