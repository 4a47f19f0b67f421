package keypool_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func TestPolicyDuration(t *testing.T) {
	p := keypool.DefaultPolicy()
	p[keypool.ReasonRateLimited] = keypool.Rule{Default: 30 * time.Second, Min: 2 * time.Second, Max: time.Minute}
	tests := []struct {
		name string
		hint keypool.Hint
		want time.Duration
	}{
		{"no hint uses the default", keypool.Hint{}, 30 * time.Second},
		{"hint within bounds is honoured", keypool.Hint{After: 12 * time.Second, Known: true}, 12 * time.Second},
		{"hint below min is raised to min", keypool.Hint{After: 100 * time.Millisecond, Known: true}, 2 * time.Second},
		{"zero hint is raised to min", keypool.Hint{After: 0, Known: true}, 2 * time.Second},
		{"hint above max is cut to max", keypool.Hint{After: time.Hour, Known: true}, time.Minute},
		{"negative hint falls back to the default", keypool.Hint{After: -5 * time.Second, Known: true}, 30 * time.Second},
		{"unknown hint ignores its value", keypool.Hint{After: 5 * time.Second}, 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Duration(keypool.ReasonRateLimited, tt.hint); got != tt.want {
				t.Errorf("Duration = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestDefaultPolicyForbiddenIsShort(t *testing.T) {
	p := keypool.DefaultPolicy()
	if f, u := p[keypool.ReasonForbidden].Max, p[keypool.ReasonUnauthorized].Default; f >= u {
		t.Errorf("forbidden max %s should be well below unauthorized default %s", f, u)
	}
	for _, r := range keypool.Reasons() {
		if err := p[r].Validate(); err != nil {
			t.Errorf("default rule %s: %v", r, err)
		}
	}
}

func TestRuleValidate(t *testing.T) {
	tests := []struct {
		name    string
		rule    keypool.Rule
		wantErr string
	}{
		{"valid", keypool.Rule{Default: time.Second, Min: time.Second, Max: time.Minute}, ""},
		{"min above max", keypool.Rule{Default: time.Second, Min: time.Minute, Max: time.Second}, "min 1m0s is greater than max 1s"},
		{"negative min", keypool.Rule{Default: time.Second, Min: -time.Second, Max: time.Minute}, "negative"},
		{"default outside bounds", keypool.Rule{Default: time.Hour, Min: time.Second, Max: time.Minute}, "default 1h0m0s is outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.rule.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewPoolRejectsBadOptions(t *testing.T) {
	dup := []keypool.Key{keypool.NewKey("p", "a", "v1"), keypool.NewKey("p", "a", "v2")}
	tests := []struct {
		name string
		opts keypool.PoolOptions
		want string
	}{
		{"empty pool", keypool.PoolOptions{Name: "p"}, `pool "p" has no keys`},
		{"no name", keypool.PoolOptions{Keys: testKeys(1)}, "pool name is empty"},
		{"duplicate id", keypool.PoolOptions{Name: "p", Keys: dup}, `duplicate key id "a"`},
		{"bad rule", keypool.PoolOptions{Name: "p", Keys: testKeys(1), Policy: keypool.Policy{
			keypool.ReasonRateLimited: {Default: time.Second, Min: time.Minute, Max: time.Second},
		}}, "cooldown rate_limited: min 1m0s is greater than max 1s"},
		{"unknown strategy", keypool.PoolOptions{Name: "p", Keys: testKeys(1), Strategy: "random"}, `unknown strategy "random"`},
		{"weights with priority", keypool.PoolOptions{Name: "p", Keys: testKeys(2), Weights: []int{1, 2}},
			"weights and tiers apply only to the weighted and tiered strategies"},
		{"tiers with weighted", keypool.PoolOptions{Name: "p", Keys: testKeys(2), Strategy: keypool.StrategyWeighted, Tiers: []int{0, 1}},
			"tiers apply only to the tiered strategy"},
		{"a weight per key", keypool.PoolOptions{Name: "p", Keys: testKeys(2), Strategy: keypool.StrategyWeighted, Weights: []int{1}},
			"1 weights for 2 keys"},
		{"zero weight", keypool.PoolOptions{Name: "p", Keys: testKeys(2), Strategy: keypool.StrategyWeighted, Weights: []int{1, 0}},
			"key 1: weight 0 is outside [1, 1000000]"},
		{"negative tier", keypool.PoolOptions{Name: "p", Keys: testKeys(2), Strategy: keypool.StrategyTiered, Tiers: []int{0, -1}},
			"key 1: tier -1 is negative"},
		{"unknown class", keypool.PoolOptions{Name: "p", Keys: testKeys(1), Failures: keypool.FailurePolicy{
			Actions: map[keypool.Class]keypool.Action{"teapot": keypool.ActionCool}}}, `unknown failure class "teapot"`},
		{"unknown action", keypool.PoolOptions{Name: "p", Keys: testKeys(1), Failures: keypool.FailurePolicy{
			Actions: map[keypool.Class]keypool.Action{keypool.ClassForbidden: "ignore"}}}, `class forbidden: unknown action "ignore"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := keypool.NewPool(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewPool err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestKeyValueNeverShows(t *testing.T) {
	const secret = "test-secret-value-abcdefghijklmnop-WXYZ"
	k := keypool.NewKey("p", "primary", secret)
	h := newHarness(t, 1, func(o *keypool.PoolOptions) { o.Keys = []keypool.Key{k} })
	a := attempt("r", 1)
	pk := h.pick(a)
	out := h.fail(a, pk, keypool.ClassRateLimited, time.Minute)
	_, exErr := h.pool.Pick(h.ctx, attempt("r", 2))
	js, err := json.Marshal(map[string]any{"key": k, "pick": pk, "status": h.pool.Status(), "outcome": out})
	if err != nil {
		t.Fatal(err)
	}
	outputs := []string{
		fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %q", k, k, k, k, k),
		fmt.Sprintf("%v %+v %#v", pk, pk, pk), fmt.Sprintf("%+v %#v", h.pool.Status(), out),
		string(js), k.Ref(), exErr.Error(),
	}
	for _, o := range outputs {
		if strings.Contains(o, secret) || strings.Contains(o, secret[:20]) {
			t.Errorf("output shows the key value: %s", o)
		}
	}
	if k.Hint() != "…WXYZ" {
		t.Errorf("Hint = %q, want the last four characters", k.Hint())
	}
	if short := keypool.NewKey("p", "s", "short"); short.Hint() != "…" {
		t.Errorf("a short value's hint shows characters: %q", short.Hint())
	}
	if rotated := keypool.NewKey("p", "primary", secret+"2"); rotated.Ref() == k.Ref() {
		t.Error("a rotated value behind the same id kept its ref")
	}
}

func TestOwnsTellsPoolKeysFromOthers(t *testing.T) {
	h := newHarness(t, 3)
	tests := []struct {
		name  string
		value string
		want  bool
	}{
		{"first key", h.keys[0].Value(), true},
		{"last key", h.keys[2].Value(), true},
		{"another value", "client-own-key-not-real-0123456789", false},
		{"a key's prefix", h.keys[0].Value()[:10], false},
		{"a key with a suffix", h.keys[0].Value() + "x", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := h.pool.Owns(tt.value); got != tt.want {
				t.Errorf("Owns = %v, want %v", got, tt.want)
			}
		})
	}
	v := h.keys[1].Value()
	if allocs := testing.AllocsPerRun(100, func() { h.pool.Owns(v) }); allocs != 0 {
		t.Errorf("Owns allocates %.0f times, want 0", allocs)
	}
}

func TestMarkNeverShortensALaterCooldown(t *testing.T) {
	h := newHarness(t, 2)
	a := attempt("", 1)
	k1 := h.pick(a)
	long := h.fail(a, k1, keypool.ClassRateLimited, 10*time.Minute)
	short := h.fail(a, k1, keypool.ClassRateLimited, 5*time.Second)
	if !short.Cooldown.Until.Equal(long.Cooldown.Until) || short.Changed || !long.Changed {
		t.Fatalf("short mark: until %s changed %v; want the longer %s kept, unchanged", short.Cooldown.Until, short.Changed, long.Cooldown.Until)
	}
	longer := h.fail(a, k1, keypool.ClassRateLimited, 20*time.Minute)
	if !longer.Cooldown.Until.After(long.Cooldown.Until) || !longer.Changed {
		t.Fatalf("a longer mark did not extend the cooldown: until %s, was %s", longer.Cooldown.Until, long.Cooldown.Until)
	}
	h.clock.Advance(15 * time.Minute)
	if got := h.serve(attempt("", 1)); got != "k2" {
		t.Fatalf("after 15m the key marked for 20m is back: picked %s", got)
	}
}

func TestCoolingKeyIsSkippedUntilItsTime(t *testing.T) {
	h := newHarness(t, 3)
	a := attempt("r", 1)
	h.fail(a, h.pick(a), keypool.ClassRateLimited, 30*time.Second)
	for _, step := range []struct {
		advance time.Duration
		want    string
	}{{0, "k2"}, {29 * time.Second, "k2"}, {time.Second, "k1"}} {
		h.clock.Advance(step.advance)
		if got := h.serve(attempt("", 1)); got != step.want {
			t.Fatalf("at +%s: picked %s, want %s", step.advance, got, step.want)
		}
	}
}

func TestEnableAndDisable(t *testing.T) {
	h := newHarness(t, 2)
	if _, err := h.pool.Disable(h.ctx, "k1", 0); err != nil {
		t.Fatal(err)
	}
	if got := h.serve(attempt("", 1)); got != "k2" {
		t.Fatalf("k1 disabled: picked %s", got)
	}
	h.clock.Advance(365 * 24 * time.Hour)
	if got := h.serve(attempt("", 1)); got != "k2" {
		t.Fatalf("a year later k1 is still disabled: picked %s", got)
	}
	if err := h.pool.Enable(h.ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if got := h.serve(attempt("", 1)); got != "k1" {
		t.Fatalf("k1 enabled: picked %s", got)
	}

	// Enable ends every cooldown of the key, key-wide and per model.
	a := keypool.Attempt{Number: 1, Model: "gpt-4o"}
	h.fail(a, h.pick(a), keypool.ClassRateLimited, time.Hour)
	k1 := h.pick(attempt("", 1))
	h.fail(attempt("", 1), k1, keypool.ClassUnauthorized, 0)
	if st := h.status("k1"); st.Available(h.clock.Now()) || len(st.Models) != 1 {
		t.Fatalf("k1 before enable: %+v", st)
	}
	if err := h.pool.Enable(h.ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if st := h.status("k1"); !st.Available(h.clock.Now()) || len(st.Models) != 0 {
		t.Fatalf("k1 after enable: %+v", st)
	}
	if got := h.serve(a); got != "k1" {
		t.Fatalf("gpt-4o after enable: picked %s", got)
	}
	if err := h.pool.Enable(h.ctx, "nope"); !errors.Is(err, keypool.ErrUnknownKey) {
		t.Fatalf("Enable(unknown) = %v, want ErrUnknownKey", err)
	}
	if _, err := h.pool.Disable(h.ctx, "nope", 0); !errors.Is(err, keypool.ErrUnknownKey) {
		t.Fatalf("Disable(unknown) = %v, want ErrUnknownKey", err)
	}
}

func TestConcurrentPicksAndFailures(t *testing.T) {
	for _, strategy := range keypool.Strategies() {
		t.Run(string(strategy), func(t *testing.T) {
			h := newHarness(t, 5, func(o *keypool.PoolOptions) { o.Strategy = strategy })
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for g := range 16 {
				wg.Go(func() {
					for i := range 100 {
						id := fmt.Sprintf("req-%d-%d", g, i)
						used := map[string]bool{}
						for n := 1; n <= 6; n++ {
							a := keypool.Attempt{RequestID: id, Number: n, Model: []string{"", "m1", "m2"}[i%3]}
							pk, err := h.pool.Pick(h.ctx, a)
							if errors.Is(err, keypool.ErrExhausted) {
								break
							}
							if err != nil {
								errs <- err
								return
							}
							if used[pk.ID()] {
								errs <- fmt.Errorf("request %s reused key %s", id, pk.ID())
								return
							}
							used[pk.ID()] = true
							if (g+i+n)%3 != 0 {
								h.pool.Finish(h.ctx, a, pk, keypool.Headroom{})
								break
							}
							class := []keypool.Class{keypool.ClassRateLimited, keypool.ClassForbidden, keypool.ClassRequestTooLarge}[n%3]
							if !h.pool.Fail(h.ctx, a, pk, keypool.Failure{Class: class, Hint: keypool.Hint{After: time.Second, Known: true}}).Retry {
								break
							}
						}
						if g == 0 && i%25 == 0 {
							// Cooldowns (1s) end during the test; tried sets (10s) do not.
							h.clock.Advance(time.Second)
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}
