package mockprovider_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/google/go-cmp/cmp"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// anthropicAuth is how a client presents its key to Anthropic.
type anthropicAuth struct {
	name string
	opts func(key string) []option.RequestOption
	// header is what arrives, given the key.
	header func(key string) http.Header
}

var anthropicAuths = []anthropicAuth{
	{
		// anthropic-sdk-go/v2's WithAPIKey sends Authorization: Bearer, not x-api-key.
		name:   "SDK WithAPIKey",
		opts:   func(key string) []option.RequestOption { return []option.RequestOption{option.WithAPIKey(key)} },
		header: func(key string) http.Header { return http.Header{"Authorization": {"Bearer " + key}} },
	},
	{
		name: "x-api-key header",
		opts: func(key string) []option.RequestOption {
			return []option.RequestOption{option.WithoutEnvironmentDefaults(), option.WithHeader("x-api-key", key)}
		},
		header: func(key string) http.Header { return http.Header{"X-Api-Key": {key}} },
	},
}

// newAnthropicClient is the official SDK pointed at srv, with retries off so that an
// error reaches the test at once instead of after the SDK's back-off.
func newAnthropicClient(srv *httptest.Server, auth []option.RequestOption) anthropic.Client {
	return anthropic.NewClient(append(auth,
		option.WithBaseURL(srv.URL),
		option.WithHTTPClient(srv.Client()),
		option.WithMaxRetries(0),
	)...)
}

func anthropicParams() anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     "claude-test",
		MaxTokens: 16,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	}
}

// streamAnthropic runs a streamed message and returns the accumulated message.
func streamAnthropic(ctx context.Context, client anthropic.Client) (anthropic.Message, []string, error) {
	stream := client.Messages.NewStreaming(ctx, anthropicParams())
	defer stream.Close()
	var msg anthropic.Message
	var events []string
	for stream.Next() {
		ev := stream.Current()
		events = append(events, ev.Type)
		if err := msg.Accumulate(ev); err != nil {
			return msg, events, err
		}
	}
	return msg, events, stream.Err()
}

// messageText joins the text blocks of msg.
func messageText(msg anthropic.Message) string {
	var b strings.Builder
	for _, block := range msg.Content {
		b.WriteString(block.Text)
	}
	return b.String()
}

func TestAnthropicSDKGetsTheMockReply(t *testing.T) {
	const key = "test-anthropic-key-1"
	wantEvents := []string{"message_start", "content_block_start", "content_block_delta", "content_block_delta",
		"content_block_delta", "content_block_stop", "message_delta", "message_stop"}
	for _, auth := range anthropicAuths {
		for _, stream := range []bool{false, true} {
			name := auth.name
			if stream {
				name += " streaming"
			}
			t.Run(name, func(t *testing.T) {
				mock, srv := newMock(t)
				client := newAnthropicClient(srv, auth.opts(key))

				var msg anthropic.Message
				if stream {
					got, events, err := streamAnthropic(t.Context(), client)
					if err != nil {
						t.Fatalf("stream: %v", err)
					}
					if diff := cmp.Diff(wantEvents, events); diff != "" {
						t.Errorf("stream events (-want +got):\n%s", diff)
					}
					msg = got
				} else {
					got, err := client.Messages.New(t.Context(), anthropicParams())
					if err != nil {
						t.Fatalf("New: %v", err)
					}
					msg = *got
				}
				if text := messageText(msg); text != mockprovider.ReplyText {
					t.Errorf("reply text = %q, want %q", text, mockprovider.ReplyText)
				}
				if msg.StopReason != anthropic.StopReasonEndTurn || msg.Model != "claude-test" {
					t.Errorf("message = stop %q model %q, want end_turn claude-test", msg.StopReason, msg.Model)
				}

				want := []mockprovider.Request{{
					Provider:          mockprovider.Anthropic,
					Method:            http.MethodPost,
					Path:              "/v1/messages",
					Key:               key,
					CredentialHeaders: auth.header(key),
					Model:             "claude-test",
					Stream:            stream,
					Status:            http.StatusOK,
				}}
				if diff := cmp.Diff(want, mock.Requests(), ignoreIDAndTime); diff != "" {
					t.Errorf("records (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestAnthropicSDKGetsTypedErrorForProgrammedStatus(t *testing.T) {
	const key = "test-anthropic-key-1"
	type errCase struct {
		name           string
		behavior       mockprovider.Behavior
		wantStatus     int
		wantType       anthropic.ErrorType
		header, hvalue string // a header that must reach the client; "" for none
	}
	var cases []errCase
	for _, form := range retryHeaderForms {
		cases = append(cases, errCase{
			name:       "429 with " + form.name,
			behavior:   mockprovider.Behavior{Status: 429, Headers: map[string]string{form.header: form.value}},
			wantStatus: 429, wantType: anthropic.ErrorTypeRateLimitError,
			header: form.header, hvalue: form.value,
		})
	}
	cases = append(cases,
		errCase{name: "401", behavior: mockprovider.Behavior{Status: 401}, wantStatus: 401, wantType: anthropic.ErrorTypeAuthenticationError},
		errCase{name: "403", behavior: mockprovider.Behavior{Status: 403}, wantStatus: 403, wantType: anthropic.ErrorTypePermissionError},
		errCase{name: "500", behavior: mockprovider.Behavior{Status: 500}, wantStatus: 500, wantType: anthropic.ErrorTypeAPIError},
		errCase{name: "529 overloaded", behavior: mockprovider.Behavior{Status: 529}, wantStatus: 529, wantType: anthropic.ErrorTypeOverloadedError},
		errCase{name: "type override", behavior: mockprovider.Behavior{Status: 400, ErrorType: "billing_error"}, wantStatus: 400, wantType: anthropic.ErrorTypeBillingError},
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
				client := newAnthropicClient(srv, anthropicAuths[0].opts(key))

				var err error
				if stream {
					_, _, err = streamAnthropic(t.Context(), client)
				} else {
					_, err = client.Messages.New(t.Context(), anthropicParams())
				}
				var apiErr *anthropic.Error
				if !errors.As(err, &apiErr) {
					t.Fatalf("error = %v (%T), want *anthropic.Error", err, err)
				}
				if apiErr.StatusCode != tc.wantStatus || apiErr.Type() != tc.wantType {
					t.Errorf("error = status %d type %q, want %d %q", apiErr.StatusCode, apiErr.Type(), tc.wantStatus, tc.wantType)
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
				if len(recs) != 1 || recs[0].Status != tc.wantStatus {
					t.Fatalf("records for key = %+v, want one with status %d", recs, tc.wantStatus)
				}
				if apiErr.RequestID != recs[0].ID {
					t.Errorf("error request id = %q, want the recorded %q", apiErr.RequestID, recs[0].ID)
				}
			})
		}
	}
}
