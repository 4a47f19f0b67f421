package keypool_test

import (
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func modelAttempt(id, model string, n int) keypool.Attempt {
	return keypool.Attempt{RequestID: id, Number: n, Model: model}
}

// TestScopeOfEachClass: rate-limit classes cool (key, model) when the model is
// known; credential and quota failures cool the key for every model.
func TestScopeOfEachClass(t *testing.T) {
	tests := []struct {
		class     keypool.Class
		wantModel string // the scope; "" key-wide
	}{
		{keypool.ClassRateLimited, "gpt-4o"},
		{keypool.ClassRateLimitUnconfirmed, "gpt-4o"},
		{keypool.ClassRequestTooLarge, "gpt-4o"},
		{keypool.ClassQuota, ""},
		{keypool.ClassUnauthorized, ""},
		{keypool.ClassForbidden, ""},
	}
	for _, tt := range tests {
		t.Run(string(tt.class), func(t *testing.T) {
			h := newHarness(t, 2, func(o *keypool.PoolOptions) { o.Failures.Quorum = 1 })
			a := modelAttempt("r", "gpt-4o", 1)
			out := h.fail(a, h.pick(a), tt.class, time.Minute)
			if out.Model != tt.wantModel {
				t.Fatalf("scope %q, want %q", out.Model, tt.wantModel)
			}
			if out.Cooldown.Until.IsZero() {
				return // failover: nothing cools
			}
			wantOther := "k2"
			if tt.wantModel != "" {
				wantOther = "k1"
			}
			if got := h.serve(modelAttempt("other", "gpt-4o-mini", 1)); got != wantOther {
				t.Errorf("gpt-4o-mini got %s, want %s", got, wantOther)
			}
			if got := h.serve(modelAttempt("same", "gpt-4o", 1)); got != "k2" {
				t.Errorf("gpt-4o got %s, want k2", got)
			}
		})
	}
}

func TestUnknownModelIsKeyWide(t *testing.T) {
	h := newHarness(t, 2)
	a := attempt("r", 1)
	if out := h.fail(a, h.pick(a), keypool.ClassRateLimited, time.Minute); out.Model != "" {
		t.Fatalf("scope %q, want key-wide", out.Model)
	}
	if got := h.serve(modelAttempt("m", "gpt-4o", 1)); got != "k2" {
		t.Errorf("a key-wide rate limit let gpt-4o through on k1 (got %s)", got)
	}
}

func TestExhaustionIsPerModel(t *testing.T) {
	h := newHarness(t, 2)
	for i, after := range []time.Duration{20 * time.Second, 40 * time.Second} {
		a := modelAttempt("a", "model-a", i+1)
		h.fail(a, h.pick(a), keypool.ClassRateLimited, after)
	}
	ex := h.exhausted(modelAttempt("new", "model-a", 1))
	if ex.Kind != keypool.ExhaustedRateLimited || ex.RetryAfter != 20*time.Second || ex.Model != "model-a" {
		t.Errorf("model-a exhausted: %+v, want rate_limited after 20s for model-a", ex)
	}
	if !strings.Contains(ex.Error(), `for model "model-a"`) {
		t.Errorf("message %q does not name the model", ex.Error())
	}
	if got := h.serve(modelAttempt("b", "model-b", 1)); got != "k1" {
		t.Errorf("model-b got %s, want k1", got)
	}
	// A key-wide cooldown longer than the model's decides the model's retry-after.
	b := attempt("kw", 1)
	h.fail(b, h.pick(b), keypool.ClassUnauthorized, 0)
	if ex := h.exhausted(modelAttempt("new2", "model-a", 1)); ex.RetryAfter != 40*time.Second {
		t.Errorf("after k1 went unauthorized: retry after %s, want k2's 40s", ex.RetryAfter)
	}
}

func TestModelsPerPoolAreBounded(t *testing.T) {
	h := newHarness(t, 2, func(o *keypool.PoolOptions) { o.MaxModels = 2 })
	for _, m := range []string{"m1", "m2"} {
		a := modelAttempt("r-"+m, m, 1)
		if out := h.fail(a, h.pick(a), keypool.ClassRateLimited, time.Minute); out.Model != m {
			t.Fatalf("%s: scope %q, want the model", m, out.Model)
		}
	}
	a := modelAttempt("r-m3", "m3", 1)
	if out := h.fail(a, h.pick(a), keypool.ClassRateLimited, time.Minute); out.Model != "" {
		t.Errorf("a third model: scope %q, want key-wide past the bound", out.Model)
	}
	// A model that already has state keeps its own scope.
	b := modelAttempt("r-m1b", "m1", 1)
	if out := h.fail(b, h.pick(b), keypool.ClassRateLimited, time.Minute); out.Model != "m1" {
		t.Errorf("m1 again: scope %q, want m1", out.Model)
	}
}

func TestModelNamesAreBounded(t *testing.T) {
	long := strings.Repeat("x", keypool.MaxModelLen+1)
	tests := []struct {
		in       string
		wantKept bool
	}{
		{"", true},
		{"gpt-4o-2024-08-06", true},
		{"claude-sonnet-4-5@20250929", true},
		{"models/gemini-2.5-pro", true},
		{"llama3:8b", true},
		{strings.Repeat("x", keypool.MaxModelLen), true},
		{long, false},
		{"gpt 4o", false},
		{"{pool}", false},
		{"model\nwith-newline", false},
		{"modèle", false},
	}
	for _, tt := range tests {
		got := keypool.ModelName(tt.in)
		if kept := got == tt.in; kept != tt.wantKept {
			t.Errorf("ModelName(%q) = %q, kept %v, want %v", tt.in, got, kept, tt.wantKept)
		}
		if !tt.wantKept && (len(got) != 33 || got[0] != '~' || keypool.ModelName(tt.in) != got) {
			t.Errorf("ModelName(%q) = %q, want a stable ~ and 32 hex digits", tt.in, got)
		}
	}
	h := newHarness(t, 2)
	a := modelAttempt("r", long, 1)
	pk := h.pick(a)
	if out := h.fail(a, pk, keypool.ClassRateLimited, time.Minute); out.Model != keypool.ModelName(long) || pk.Model() != out.Model {
		t.Errorf("a long model's scope %q, want its hash", out.Model)
	}
}

func TestStatusShowsEachScope(t *testing.T) {
	h := newHarness(t, 2)
	for _, m := range []string{"model-b", "model-a"} {
		a := modelAttempt("r-"+m, m, 1)
		h.fail(a, h.pick(a), keypool.ClassRateLimited, time.Minute)
	}
	st := h.status("k1")
	if !st.Available(h.clock.Now()) || len(st.Models) != 2 || st.Models[0].Model != "model-a" ||
		st.Models[0].Phase != keypool.PhaseCooling || st.Models[1].Reason != keypool.ReasonRateLimited {
		t.Errorf("k1 status: %+v", st)
	}
	if st.LastFailure == nil || st.LastFailure.Model != "model-a" || st.LastFailure.Action != keypool.ActionCool {
		t.Errorf("k1 last failure: %+v", st.LastFailure)
	}
}
