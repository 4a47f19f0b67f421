package mockprovider_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// newOpenAIClient is the official SDK pointed at srv, with retries off so that an error
// reaches the test at once instead of after the SDK's back-off.
func newOpenAIClient(srv *httptest.Server, key string, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(srv.URL + "/v1/"),
		option.WithAPIKey(key),
		option.WithHTTPClient(srv.Client()),
		option.WithMaxRetries(0),
	}, opts...)...)
}

func openAIParams() openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    "gpt-test",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	}
}

// streamOpenAI runs a streamed chat completion and returns the joined text.
func streamOpenAI(ctx context.Context, client openai.Client, params openai.ChatCompletionNewParams) (string, openai.ChatCompletion, error) {
	stream := client.Chat.Completions.NewStreaming(ctx, params)
	defer stream.Close()
	var acc openai.ChatCompletionAccumulator
	var text strings.Builder
	for stream.Next() {
		chunk := stream.Current()
		acc.AddChunk(chunk)
		for _, c := range chunk.Choices {
			text.WriteString(c.Delta.Content)
		}
	}
	return text.String(), acc.ChatCompletion, stream.Err()
}

func TestOpenAISDKGetsTheMockReply(t *testing.T) {
	const key = "test-openai-key-1"
	tests := []struct {
		name   string
		stream bool
	}{
		{"non-streaming", false},
		{"streaming", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mock, srv := newMock(t)
			client := newOpenAIClient(srv, key)

			var text string
			if tt.stream {
				params := openAIParams()
				params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
				got, acc, err := streamOpenAI(t.Context(), client, params)
				if err != nil {
					t.Fatalf("stream: %v", err)
				}
				if acc.Usage.TotalTokens == 0 {
					t.Errorf("streamed usage is empty although include_usage was asked for")
				}
				if len(acc.Choices) != 1 || acc.Choices[0].FinishReason != "stop" {
					t.Errorf("accumulated choices = %+v, want one finished with stop", acc.Choices)
				}
				text = got
			} else {
				res, err := client.Chat.Completions.New(t.Context(), openAIParams())
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if res.Model != "gpt-test" || len(res.Choices) != 1 {
					t.Fatalf("completion = model %q, %d choices; want gpt-test, 1", res.Model, len(res.Choices))
				}
				text = res.Choices[0].Message.Content
			}
			if text != mockprovider.ReplyText {
				t.Errorf("reply text = %q, want %q", text, mockprovider.ReplyText)
			}

			want := []mockprovider.Request{{
				Provider:          mockprovider.OpenAI,
				Method:            http.MethodPost,
				Path:              "/v1/chat/completions",
				Key:               key,
				CredentialHeaders: http.Header{"Authorization": {"Bearer " + key}},
				Model:             "gpt-test",
				Stream:            tt.stream,
				Status:            http.StatusOK,
			}}
			if diff := cmp.Diff(want, mock.Requests(), ignoreIDAndTime); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOpenAISDKGetsTypedErrorForProgrammedStatus(t *testing.T) {
	const key = "test-openai-key-1"
	type errCase struct {
		name           string
		behavior       mockprovider.Behavior
		wantStatus     int
		wantType       string
		wantCode       string
		header, hvalue string // a header that must reach the client; "" for none
	}
	var cases []errCase
	for _, form := range retryHeaderForms {
		cases = append(cases, errCase{
			name:       "429 with " + form.name,
			behavior:   mockprovider.Behavior{Status: 429, Headers: map[string]string{form.header: form.value}},
			wantStatus: 429, wantType: "requests", wantCode: "rate_limit_exceeded",
			header: form.header, hvalue: form.value,
		})
	}
	cases = append(cases,
		errCase{name: "429 insufficient_quota", behavior: mockprovider.Behavior{Status: 429, ErrorType: "insufficient_quota", ErrorCode: "insufficient_quota"},
			wantStatus: 429, wantType: "insufficient_quota", wantCode: "insufficient_quota"},
		errCase{name: "401 invalid key", behavior: mockprovider.Behavior{Status: 401},
			wantStatus: 401, wantType: "invalid_request_error", wantCode: "invalid_api_key"},
		errCase{name: "403 region", behavior: mockprovider.Behavior{Status: 403},
			wantStatus: 403, wantType: "request_forbidden", wantCode: "unsupported_country_region_territory"},
		errCase{name: "503 overloaded", behavior: mockprovider.Behavior{Status: 503},
			wantStatus: 503, wantType: "server_error"},
		errCase{name: "529", behavior: mockprovider.Behavior{Status: 529},
			wantStatus: 529, wantType: "server_error"},
	)

	for _, tc := range cases {
		for _, stream := range []bool{false, true} {
			name := tc.name
			if stream {
				name += " streaming"
			}
			t.Run(name, func(t *testing.T) {
				mock, srv := newMock(t)
				mustSet(t, mock, key, tc.behavior)
				client := newOpenAIClient(srv, key)

				var err error
				if stream {
					_, _, err = streamOpenAI(t.Context(), client, openAIParams())
				} else {
					_, err = client.Chat.Completions.New(t.Context(), openAIParams())
				}
				var apiErr *openai.Error
				if !errors.As(err, &apiErr) {
					t.Fatalf("error = %v (%T), want *openai.Error", err, err)
				}
				if apiErr.StatusCode != tc.wantStatus || apiErr.Type != tc.wantType || apiErr.Code != tc.wantCode {
					t.Errorf("error = status %d type %q code %q, want %d %q %q",
						apiErr.StatusCode, apiErr.Type, apiErr.Code, tc.wantStatus, tc.wantType, tc.wantCode)
				}
				if apiErr.Message == "" {
					t.Errorf("error message is empty")
				}
				if tc.header != "" {
					if got := apiErr.Response.Header.Get(tc.header); got != tc.hvalue {
						t.Errorf("response header %s = %q, want %q", tc.header, got, tc.hvalue)
					}
				}
				recs := mock.RequestsFor(key)
				if len(recs) != 1 || recs[0].Status != tc.wantStatus || recs[0].Stream != stream {
					t.Errorf("records for key = %+v, want one with status %d, stream %v", recs, tc.wantStatus, stream)
				}
			})
		}
	}
}

func TestOpenAIRecordsEveryCredentialHeader(t *testing.T) {
	const key = "test-openai-key-2"
	mock, srv := newMock(t)
	client := newOpenAIClient(srv, key,
		option.WithHeader("api-key", "test-azure-key-1"),
		option.WithHeader("x-goog-api-key", "test-gemini-key-1"),
		option.WithHeader("x-api-key", "test-anthropic-key-9"),
		option.WithQuery("key", "test-gemini-key-2"),
	)
	if _, err := client.Chat.Completions.New(t.Context(), openAIParams()); err != nil {
		t.Fatalf("New: %v", err)
	}
	recs := mock.Requests()
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1", len(recs))
	}
	want := http.Header{
		"Authorization":  {"Bearer " + key},
		"Api-Key":        {"test-azure-key-1"},
		"X-Goog-Api-Key": {"test-gemini-key-1"},
		"X-Api-Key":      {"test-anthropic-key-9"},
	}
	if diff := cmp.Diff(want, recs[0].CredentialHeaders); diff != "" {
		t.Errorf("credential headers (-want +got):\n%s", diff)
	}
	if recs[0].QueryKey != "test-gemini-key-2" {
		t.Errorf("query key = %q, want test-gemini-key-2", recs[0].QueryKey)
	}
	if recs[0].Key != key {
		t.Errorf("key = %q, want the bearer token %q: OpenAI reads only Authorization", recs[0].Key, key)
	}
}
