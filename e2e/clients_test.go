package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaioption "github.com/openai/openai-go/v3/option"
)

// placeholderKey is what SDK users put in their client when a gateway owns the keys.
const placeholderKey = "placeholder-not-a-real-key"

// openaiClient is the official OpenAI SDK pointed at the proxy's route for pool.
// SDK retries are off: every retry the test sees is the proxy's.
func (tg *target) openaiClient(pool, apiKey string) openai.Client {
	return openai.NewClient(
		openaioption.WithBaseURL(tg.url+"/"+pool+"/v1/"),
		openaioption.WithAPIKey(apiKey),
		openaioption.WithMaxRetries(0),
		openaioption.WithRequestTimeout(30*time.Second),
	)
}

func (tg *target) anthropicClient(apiKey string) anthropic.Client {
	return anthropic.NewClient(
		anthropicoption.WithoutEnvironmentDefaults(),
		anthropicoption.WithBaseURL(tg.url+"/anthropic/"),
		anthropicoption.WithAPIKey(apiKey),
		anthropicoption.WithMaxRetries(0),
		anthropicoption.WithRequestTimeout(30*time.Second),
	)
}

// chat sends one chat request through the given provider's SDK and returns the
// reply text, streamed or not.
type chatFunc func(ctx context.Context, tg *target) (string, error)

func openaiChat(pool, apiKey string, stream bool) chatFunc {
	return func(ctx context.Context, tg *target) (string, error) {
		c := tg.openaiClient(pool, apiKey)
		params := openai.ChatCompletionNewParams{
			Model:    openai.ChatModelGPT4oMini,
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
		defer s.Close()
		var b strings.Builder
		for s.Next() {
			for _, ch := range s.Current().Choices {
				b.WriteString(ch.Delta.Content)
			}
		}
		return b.String(), s.Err()
	}
}

func anthropicChat(apiKey string, stream bool) chatFunc {
	return func(ctx context.Context, tg *target) (string, error) {
		c := tg.anthropicClient(apiKey)
		params := anthropic.MessageNewParams{
			Model:     anthropic.ModelClaudeSonnet4_5,
			MaxTokens: 64,
			Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hello"))},
		}
		if !stream {
			msg, err := c.Messages.New(ctx, params)
			if err != nil {
				return "", err
			}
			var b strings.Builder
			for _, block := range msg.Content {
				b.WriteString(block.Text)
			}
			return b.String(), nil
		}
		s := c.Messages.NewStreaming(ctx, params)
		defer s.Close()
		var b strings.Builder
		for s.Next() {
			if ev, ok := s.Current().AsAny().(anthropic.ContentBlockDeltaEvent); ok {
				b.WriteString(ev.Delta.Text)
			}
		}
		return b.String(), s.Err()
	}
}

// chatCase is one way of calling through the proxy: a provider's SDK, streamed or not.
type chatCase struct {
	name string
	pool string
	chat chatFunc
}

func chatCases() []chatCase {
	return []chatCase{
		{"openai", "openai", openaiChat("openai", placeholderKey, false)},
		{"openai-stream", "openai", openaiChat("openai", placeholderKey, true)},
		{"anthropic", "anthropic", anthropicChat(placeholderKey, false)},
		{"anthropic-stream", "anthropic", anthropicChat(placeholderKey, true)},
	}
}

// keyState is one key as a replica's admin API lists it.
type keyState struct {
	ID        string `json:"id"`
	Available bool   `json:"available"`
	Reason    string `json:"reason"`
	// Models are the models the key has state of its own for: a rate limit cools a
	// key for the request's model when Envoy read it from the JSON body.
	Models []struct {
		Phase  string `json:"phase"`
		Reason string `json:"reason"`
	} `json:"models"`
}

// cooling reports whether the key cools down for reason, for every model or for one.
func (k keyState) cooling(reason string) bool {
	if !k.Available && k.Reason == reason {
		return true
	}
	for _, m := range k.Models {
		if m.Phase == "cooling" && m.Reason == reason {
			return true
		}
	}
	return false
}

// adminKeys lists pool's keys as replica i's admin API sees them.
func (tg *target) adminKeys(ctx context.Context, i int, pool string) (map[string]keyState, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, tg.adminURLs[i]+"/v1/keys", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tg.adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Pools []struct {
			Name string     `json:"name"`
			Keys []keyState `json:"keys"`
		} `json:"pools"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("admin %s: %w", tg.adminURLs[i], err)
	}
	out := map[string]keyState{}
	for _, p := range body.Pools {
		if p.Name == pool {
			for _, k := range p.Keys {
				out[k.ID] = k
			}
		}
	}
	return out, nil
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}
