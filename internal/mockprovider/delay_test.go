package mockprovider_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

func TestSlowKeyWaitsAndHonoursCancellation(t *testing.T) {
	const key = "test-slow-key-1"
	const delay = time.Minute
	tests := []struct {
		name        string
		behavior    mockprovider.Behavior
		cancel      bool
		wantElapsed time.Duration
		wantStatus  int // recorded; 0 when canceled
	}{
		{"slow OK answers after the delay", mockprovider.Behavior{Delay: delay}, false, delay, 200},
		{"slow 429 answers after the delay", mockprovider.Behavior{Status: 429, Delay: delay}, false, delay, 429},
		{"canceled request ends the wait unanswered", mockprovider.Behavior{Delay: delay}, true, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A fake clock: the minute passes at once, and ServeHTTP is called directly
			// because a real socket would leave the bubble.
			synctest.Test(t, func(t *testing.T) {
				mock := mockprovider.New()
				mustSet(t, mock, key, tt.behavior)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/chat/completions", strings.NewReader(chatBody))
				req.Header.Set("Authorization", "Bearer "+key)
				rec := httptest.NewRecorder()

				start := time.Now()
				done := make(chan struct{})
				var aborted any
				go func() {
					defer close(done)
					defer func() { aborted = recover() }()
					mock.ServeHTTP(rec, req)
				}()
				synctest.Wait() // the handler is now blocked in its delay
				if len(mock.Requests()) != 0 {
					t.Fatalf("answered before the delay")
				}
				if tt.cancel {
					cancel()
				}
				<-done

				if elapsed := time.Since(start); elapsed != tt.wantElapsed {
					t.Errorf("answered after %s, want %s", elapsed, tt.wantElapsed)
				}
				recs := mock.Requests()
				if len(recs) != 1 || recs[0].Status != tt.wantStatus || recs[0].Canceled != tt.cancel {
					t.Fatalf("records = %+v, want one with status %d, canceled %v", recs, tt.wantStatus, tt.cancel)
				}
				// net/http closes the connection unanswered on this panic value.
				if tt.cancel && (aborted != http.ErrAbortHandler || rec.Body.Len() != 0) {
					t.Errorf("canceled request: panic %v, body %q; want http.ErrAbortHandler and no body", aborted, rec.Body)
				}
				if !tt.cancel && aborted != nil {
					t.Errorf("handler panicked: %v", aborted)
				}
				if !tt.cancel && rec.Code != tt.wantStatus {
					t.Errorf("status = %d, want %d", rec.Code, tt.wantStatus)
				}
			})
		})
	}
}
