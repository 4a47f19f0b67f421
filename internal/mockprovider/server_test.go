package mockprovider_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

const (
	openAIPath    = "/v1/chat/completions"
	anthropicPath = "/v1/messages"
	chatBody      = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
)

func TestRequestWithoutCredentialAnswers401InProviderFormat(t *testing.T) {
	tests := []struct {
		name     string
		path     string
		headers  map[string]string
		wantType string // error.type in the provider's body
	}{
		{"openai no header", openAIPath, nil, "invalid_request_error"},
		{"openai non-bearer authorization", openAIPath, map[string]string{"Authorization": "Basic dGVzdA=="}, "invalid_request_error"},
		{"openai ignores x-api-key", openAIPath, map[string]string{"x-api-key": "test-anthropic-key-1"}, "invalid_request_error"},
		{"anthropic no header", anthropicPath, nil, "authentication_error"},
		{"anthropic ignores x-goog-api-key", anthropicPath, map[string]string{"x-goog-api-key": "test-gemini-key-1"}, "authentication_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mock, srv := newMock(t)
			status, _, body := post(t, srv, tt.path, chatBody, tt.headers)
			if status != http.StatusUnauthorized {
				t.Errorf("status = %d, want 401", status)
			}
			var got struct {
				Error struct {
					Type string `json:"type"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(body), &got); err != nil || got.Error.Type != tt.wantType {
				t.Errorf("body %s: error.type = %q (%v), want %q", body, got.Error.Type, err, tt.wantType)
			}
			recs := mock.Requests()
			if len(recs) != 1 || recs[0].Key != "" || recs[0].Status != http.StatusUnauthorized {
				t.Errorf("records = %+v, want one without key, status 401", recs)
			}
		})
	}
}

func TestUnprogrammedKeyAnswers200AndBadBodyAnswers400(t *testing.T) {
	tests := []struct {
		name       string
		path, body string
		headers    map[string]string
		behavior   *mockprovider.Behavior
		wantStatus int
	}{
		{"openai unprogrammed key", openAIPath, chatBody, map[string]string{"Authorization": "Bearer test-openai-key-1"}, nil, 200},
		{"anthropic unprogrammed key", anthropicPath, chatBody, map[string]string{"x-api-key": "test-anthropic-key-1"}, nil, 200},
		{"openai bad body", openAIPath, "not json", map[string]string{"Authorization": "Bearer test-openai-key-1"}, nil, 400},
		{"anthropic bad body", anthropicPath, "[", map[string]string{"x-api-key": "test-anthropic-key-1"}, nil, 400},
		// Providers check the key before the body: a programmed error wins.
		{"programmed error before bad body", openAIPath, "not json", map[string]string{"Authorization": "Bearer test-openai-key-1"},
			&mockprovider.Behavior{Status: 429}, 429},
		{"explicit 200", anthropicPath, chatBody, map[string]string{"x-api-key": "test-anthropic-key-1"},
			&mockprovider.Behavior{Status: 200}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mock, srv := newMock(t)
			if tt.behavior != nil {
				for _, key := range []string{"test-openai-key-1", "test-anthropic-key-1"} {
					mustSet(t, mock, key, *tt.behavior)
				}
			}
			status, _, body := post(t, srv, tt.path, tt.body, tt.headers)
			if status != tt.wantStatus {
				t.Errorf("status = %d, want %d; body %s", status, tt.wantStatus, body)
			}
			if recs := mock.Requests(); len(recs) != 1 || recs[0].Status != tt.wantStatus {
				t.Errorf("records = %+v, want one with status %d", recs, tt.wantStatus)
			}
		})
	}
}

func TestBehaviorHeadersAreSentOnOKAnswersToo(t *testing.T) {
	mock, srv := newMock(t)
	mustSet(t, mock, "test-openai-key-1", mockprovider.Behavior{Headers: map[string]string{"x-ratelimit-remaining-requests": "0"}})
	status, h, _ := post(t, srv, openAIPath, chatBody, map[string]string{"Authorization": "Bearer test-openai-key-1"})
	if status != 200 || h.Get("x-ratelimit-remaining-requests") != "0" {
		t.Errorf("status %d, x-ratelimit-remaining-requests %q; want 200 and 0", status, h.Get("x-ratelimit-remaining-requests"))
	}
}

func TestRecordsCountsAndResets(t *testing.T) {
	mock, srv := newMock(t)
	mustSet(t, mock, "test-openai-key-1", mockprovider.Behavior{Status: 429})
	for _, key := range []string{"test-openai-key-1", "test-openai-key-2", "test-openai-key-1", ""} {
		h := map[string]string{}
		if key != "" {
			h["Authorization"] = "Bearer " + key
		}
		post(t, srv, openAIPath, chatBody, h)
	}

	want := map[string]int{"test-openai-key-1": 2, "test-openai-key-2": 1, "": 1}
	if diff := cmp.Diff(want, mock.Counts()); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	seen := map[string]bool{}
	for _, r := range mock.Requests() {
		if seen[r.ID] {
			t.Errorf("request id %q recorded twice", r.ID)
		}
		seen[r.ID] = true
	}

	mock.ClearRequests()
	if n := len(mock.Requests()); n != 0 {
		t.Errorf("after ClearRequests: %d records, want 0", n)
	}
	if status, _, _ := post(t, srv, openAIPath, chatBody, map[string]string{"Authorization": "Bearer test-openai-key-1"}); status != 429 {
		t.Errorf("after ClearRequests the key answers %d, want its programmed 429", status)
	}

	mock.Reset()
	if n := len(mock.Requests()); n != 0 {
		t.Errorf("after Reset: %d records, want 0", n)
	}
	if status, _, _ := post(t, srv, openAIPath, chatBody, map[string]string{"Authorization": "Bearer test-openai-key-1"}); status != 200 {
		t.Errorf("after Reset the key answers %d, want 200", status)
	}
}

func TestInvalidBehaviorIsRejected(t *testing.T) {
	tests := []struct {
		name string
		key  string
		b    mockprovider.Behavior
	}{
		{"redirect status", "test-openai-key-1", mockprovider.Behavior{Status: 302}},
		{"informational status", "test-openai-key-1", mockprovider.Behavior{Status: 100}},
		{"status beyond 599", "test-openai-key-1", mockprovider.Behavior{Status: 600}},
		{"negative delay", "test-openai-key-1", mockprovider.Behavior{Delay: -1}},
		{"empty key", "", mockprovider.Behavior{Status: 429}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mock := mockprovider.New()
			if err := mock.SetBehavior(tt.key, tt.b); err == nil {
				t.Errorf("SetBehavior(%q, %+v) = nil, want an error", tt.key, tt.b)
			}
			if got := mock.Behaviors(); len(got) != 0 {
				t.Errorf("behaviors after rejection = %v, want none", got)
			}
		})
	}
}
