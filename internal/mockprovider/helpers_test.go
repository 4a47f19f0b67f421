package mockprovider_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// newMock starts a mock behind an httptest.Server that the test closes.
func newMock(t *testing.T) (*mockprovider.Server, *httptest.Server) {
	t.Helper()
	mock := mockprovider.New()
	srv := httptest.NewServer(mock)
	t.Cleanup(srv.Close)
	return mock, srv
}

// mustSet programs key or fails the test.
func mustSet(t *testing.T, mock *mockprovider.Server, key string, b mockprovider.Behavior) {
	t.Helper()
	if err := mock.SetBehavior(key, b); err != nil {
		t.Fatalf("SetBehavior(%q): %v", key, err)
	}
}

// retryHeaderForm is one way a provider says when to come back (PROVIDERS.md).
type retryHeaderForm struct {
	name          string
	header, value string
}

// retryHeaderForms are every retry header form envoy-keypool reads; the dates are fixed
// and in the future of any test run, and only their arrival is asserted.
var retryHeaderForms = []retryHeaderForm{
	{"retry-after-ms", "retry-after-ms", "1500"},
	{"Retry-After seconds", "Retry-After", "7"},
	{"Retry-After HTTP-date", "Retry-After", time.Date(2099, 1, 2, 3, 4, 5, 0, time.UTC).Format(http.TimeFormat)},
	{"x-ratelimit-reset-requests duration", "x-ratelimit-reset-requests", "6m0s"},
	{"x-ratelimit-reset-tokens duration", "x-ratelimit-reset-tokens", "232ms"},
	{"anthropic-ratelimit-requests-reset RFC 3339", "anthropic-ratelimit-requests-reset", "2099-01-02T03:04:05Z"},
}

// ignoreIDAndTime compares records on what a test can predict.
var ignoreIDAndTime = cmpopts.IgnoreFields(mockprovider.Request{}, "ID", "Time")

// post sends body to path on srv with the given headers and returns the status,
// the response headers and the body.
func post(t *testing.T, srv *httptest.Server, path, body string, headers map[string]string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("POST %s: read body: %v", path, err)
	}
	return res.StatusCode, res.Header, string(data)
}
