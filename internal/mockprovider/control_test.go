package mockprovider_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// controlOp is one change made to a mock, once through the Go API and once through the
// HTTP control API, so that a test can prove both have the same effect.
type controlOp struct {
	goAPI func(*mockprovider.Server) error
	http  func(context.Context, *mockprovider.Client) error
}

func setOp(key string, b mockprovider.Behavior) controlOp {
	return controlOp{
		goAPI: func(s *mockprovider.Server) error { return s.SetBehavior(key, b) },
		http:  func(ctx context.Context, c *mockprovider.Client) error { return c.SetBehavior(ctx, key, b) },
	}
}

func setManyOp(m map[string]mockprovider.Behavior) controlOp {
	return controlOp{
		goAPI: func(s *mockprovider.Server) error { return s.SetBehaviors(m) },
		http:  func(ctx context.Context, c *mockprovider.Client) error { return c.SetBehaviors(ctx, m) },
	}
}

func clearOp(key string) controlOp {
	return controlOp{
		goAPI: func(s *mockprovider.Server) error { s.ClearBehavior(key); return nil },
		http:  func(ctx context.Context, c *mockprovider.Client) error { return c.ClearBehavior(ctx, key) },
	}
}

var resetOp = controlOp{
	goAPI: func(s *mockprovider.Server) error { s.Reset(); return nil },
	http:  func(ctx context.Context, c *mockprovider.Client) error { return c.Reset(ctx) },
}

var clearRequestsOp = controlOp{
	goAPI: func(s *mockprovider.Server) error { s.ClearRequests(); return nil },
	http:  func(ctx context.Context, c *mockprovider.Client) error { return c.ClearRequests(ctx) },
}

// probeKeys are the keys every scenario sends a request with, after its ops; the
// slash in one proves the control API escapes keys in paths.
var probeKeys = []string{"test-key-1", "test-key-2", "test/key-3"}

func TestHTTPControlAPIProgramsLikeTheGoAPI(t *testing.T) {
	rateLimited := mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "7"}, Message: "slow down"}
	tests := []struct {
		name string
		// before runs ahead of the probe requests, after between them and the reads.
		before, after []controlOp
	}{
		{name: "nothing programmed"},
		{name: "one key rate limited", before: []controlOp{setOp("test-key-1", rateLimited)}},
		{name: "several keys at once", before: []controlOp{setManyOp(map[string]mockprovider.Behavior{
			"test-key-1": {Status: 401},
			"test/key-3": {Status: 529, ErrorType: "overloaded_error"},
			// Programmed but never probed: the delay only has to round-trip.
			"test-slow-key": {Delay: 1500 * time.Millisecond},
		})}},
		{name: "later behaviour replaces earlier", before: []controlOp{setOp("test-key-2", rateLimited), setOp("test-key-2", mockprovider.Behavior{Status: 403})}},
		{name: "cleared key answers 200", before: []controlOp{setOp("test/key-3", rateLimited), clearOp("test/key-3")}},
		{name: "reset forgets behaviours and records", before: []controlOp{setOp("test-key-1", rateLimited)}, after: []controlOp{resetOp}},
		{name: "clear requests keeps behaviours", before: []controlOp{setOp("test-key-2", rateLimited)}, after: []controlOp{clearRequestsOp}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			goMock, goSrv := newMock(t)
			_, httpSrv := newMock(t)
			client := &mockprovider.Client{BaseURL: httpSrv.URL, HTTPClient: httpSrv.Client()}

			for i, op := range tt.before {
				if err := op.goAPI(goMock); err != nil {
					t.Fatalf("Go op %d: %v", i, err)
				}
				if err := op.http(ctx, client); err != nil {
					t.Fatalf("HTTP op %d: %v", i, err)
				}
			}
			for _, key := range probeKeys {
				for _, path := range []string{openAIPath, anthropicPath} {
					h := map[string]string{"Authorization": "Bearer " + key}
					goStatus, goHeader, _ := post(t, goSrv, path, chatBody, h)
					httpStatus, httpHeader, _ := post(t, httpSrv, path, chatBody, h)
					if goStatus != httpStatus || goHeader.Get("Retry-After") != httpHeader.Get("Retry-After") {
						t.Errorf("%s %s: Go-programmed answered %d Retry-After %q, HTTP-programmed %d %q",
							path, key, goStatus, goHeader.Get("Retry-After"), httpStatus, httpHeader.Get("Retry-After"))
					}
				}
			}
			for i, op := range tt.after {
				if err := op.goAPI(goMock); err != nil {
					t.Fatalf("Go op %d: %v", i, err)
				}
				if err := op.http(ctx, client); err != nil {
					t.Fatalf("HTTP op %d: %v", i, err)
				}
			}

			httpBehaviors, err := client.Behaviors(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(goMock.Behaviors(), httpBehaviors); diff != "" {
				t.Errorf("behaviors (-Go +HTTP):\n%s", diff)
			}
			httpRequests, err := client.Requests(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(goMock.Requests(), httpRequests, ignoreIDAndTime, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("requests (-Go +HTTP):\n%s", diff)
			}
			httpFor, err := client.RequestsFor(ctx, "test/key-3")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(goMock.RequestsFor("test/key-3"), httpFor, ignoreIDAndTime, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("requests for test/key-3 (-Go +HTTP):\n%s", diff)
			}
			httpCounts, err := client.Counts(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(goMock.Counts(), httpCounts); diff != "" {
				t.Errorf("counts (-Go +HTTP):\n%s", diff)
			}
		})
	}
}

func TestHTTPControlAPIRejectsBadBehaviors(t *testing.T) {
	tests := []struct {
		name, method, path, body string
		wantStatus               int
	}{
		{"not JSON", http.MethodPut, "/_mock/keys/test-key-1", "{", 400},
		{"unknown field", http.MethodPut, "/_mock/keys/test-key-1", `{"statuss":429}`, 400},
		{"bad status", http.MethodPut, "/_mock/keys/test-key-1", `{"status":302}`, 400},
		{"bad delay", http.MethodPut, "/_mock/keys/test-key-1", `{"delay":"soon"}`, 400},
		{"negative delay", http.MethodPut, "/_mock/keys/test-key-1", `{"delay":"-1s"}`, 400},
		{"bulk with one bad key", http.MethodPost, "/_mock/keys", `{"test-key-1":{"status":429},"test-key-2":{"status":42}}`, 400},
		{"bulk with empty key", http.MethodPost, "/_mock/keys", `{"":{"status":429}}`, 400},
		{"unset key", http.MethodGet, "/_mock/keys/test-key-1", "", 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mock, srv := newMock(t)
			req, err := http.NewRequestWithContext(t.Context(), tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tt.wantStatus || res.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%s %s = %d %s, want %d application/json", tt.method, tt.path, res.StatusCode, res.Header.Get("Content-Type"), tt.wantStatus)
			}
			if got := mock.Behaviors(); len(got) != 0 {
				t.Errorf("behaviors after rejection = %v, want none: a bulk change is all or nothing", got)
			}
		})
	}
}

func TestClientReportsControlErrors(t *testing.T) {
	_, srv := newMock(t)
	client := &mockprovider.Client{BaseURL: srv.URL, HTTPClient: srv.Client()}
	err := client.SetBehavior(t.Context(), "test-key-1", mockprovider.Behavior{Status: 302})
	if !errors.Is(err, mockprovider.ErrControl) || !strings.Contains(err.Error(), "status 302") {
		t.Errorf("SetBehavior(302) = %v, want ErrControl naming the status", err)
	}
}

func TestBehaviorWireFormat(t *testing.T) {
	const file = `{
		"test-key-1": {"status": 429, "error_type": "tokens", "error_code": "rate_limit_exceeded",
		               "message": "slow down", "headers": {"Retry-After": "7"}, "delay": "1.5s"},
		"test-key-2": {}
	}`
	got, err := mockprovider.DecodeBehaviors(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]mockprovider.Behavior{
		"test-key-1": {Status: 429, ErrorType: "tokens", ErrorCode: "rate_limit_exceeded", Message: "slow down",
			Headers: map[string]string{"Retry-After": "7"}, Delay: 1500 * time.Millisecond},
		"test-key-2": {},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decoded (-want +got):\n%s", diff)
	}

	// What GET /_mock/keys shows decodes back to the same behaviours.
	mock, srv := newMock(t)
	if err := mock.SetBehaviors(want); err != nil {
		t.Fatal(err)
	}
	client := &mockprovider.Client{BaseURL: srv.URL + "/", HTTPClient: srv.Client()}
	back, err := client.Behaviors(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}
