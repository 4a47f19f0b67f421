package keypool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func newFakeClock() *fakeclock.Clock {
	return fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
}

// testKeys returns n keys of pool "p" with obviously fake values.
func testKeys(n int) []keypool.Key {
	keys := make([]keypool.Key, n)
	for i := range keys {
		keys[i] = keypool.NewKey("p", fmt.Sprintf("k%d", i+1), fmt.Sprintf("test-secret-value-%d-xxxxxxxxxxxx", i+1))
	}
	return keys
}

func newTestPool(t *testing.T, n int, clock keypool.Clock) *keypool.Pool {
	t.Helper()
	p, err := keypool.NewPool(keypool.PoolOptions{Name: "p", Keys: testKeys(n), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustPick(t *testing.T, p *keypool.Pool, a keypool.Attempt) keypool.Key {
	t.Helper()
	k, err := p.Pick(context.Background(), a)
	if err != nil {
		t.Fatalf("Pick(%+v): %v", a, err)
	}
	return k.Key
}

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

func TestMarkNeverShortensLongerCooldown(t *testing.T) {
	clock := newFakeClock()
	p := newTestPool(t, 2, clock)
	ctx := context.Background()
	k1 := mustPick(t, p, keypool.Attempt{Number: 1})

	long := p.FailKey(ctx, keypool.Attempt{}, k1, keypool.ReasonRateLimited, keypool.Hint{After: 10 * time.Minute, Known: true})
	short := p.FailKey(ctx, keypool.Attempt{}, k1, keypool.ReasonRateLimited, keypool.Hint{After: 5 * time.Second, Known: true})
	if !short.Until.Equal(long.Until) {
		t.Fatalf("short mark replaced the longer one: until %s, want %s", short.Until, long.Until)
	}
	longer := p.FailKey(ctx, keypool.Attempt{}, k1, keypool.ReasonRateLimited, keypool.Hint{After: 20 * time.Minute, Known: true})
	if !longer.Until.After(long.Until) {
		t.Fatalf("a longer mark did not extend the cooldown: until %s, was %s", longer.Until, long.Until)
	}
	clock.Advance(15 * time.Minute)
	if got := mustPick(t, p, keypool.Attempt{Number: 1}); got.ID() != "k2" {
		t.Fatalf("after 15m the key marked for 20m is back: picked %s", got.ID())
	}
}

func TestPickPriorityOrder(t *testing.T) {
	clock := newFakeClock()
	p := newTestPool(t, 3, clock)
	for range 5 {
		if got := mustPick(t, p, keypool.Attempt{Number: 1, RequestID: "r"}); got.ID() != "k1" {
			t.Fatalf("picked %s, want the first key while it is healthy", got.ID())
		}
	}
}

func TestCoolingKeyIsSkippedUntilItsTime(t *testing.T) {
	clock := newFakeClock()
	p := newTestPool(t, 3, clock)
	ctx := context.Background()
	k1 := mustPick(t, p, keypool.Attempt{Number: 1})
	p.FailKey(ctx, keypool.Attempt{}, k1, keypool.ReasonRateLimited, keypool.Hint{After: 30 * time.Second, Known: true})

	if got := mustPick(t, p, keypool.Attempt{Number: 1}); got.ID() != "k2" {
		t.Fatalf("while k1 cools: picked %s, want k2", got.ID())
	}
	clock.Advance(29 * time.Second)
	if got := mustPick(t, p, keypool.Attempt{Number: 1}); got.ID() != "k2" {
		t.Fatalf("1s before k1 returns: picked %s, want k2", got.ID())
	}
	clock.Advance(time.Second)
	if got := mustPick(t, p, keypool.Attempt{Number: 1}); got.ID() != "k1" {
		t.Fatalf("when k1's cooldown ended: picked %s, want k1", got.ID())
	}
}

func TestEachKeyAtMostOncePerRequest(t *testing.T) {
	clock := newFakeClock()
	p := newTestPool(t, 3, clock)
	ctx := context.Background()
	seen := map[string]bool{}
	for attempt := 1; attempt <= 3; attempt++ {
		a := keypool.Attempt{RequestID: "req-1", Number: attempt}
		k := mustPick(t, p, a)
		if seen[k.ID()] {
			t.Fatalf("attempt %d reused %s", attempt, k.ID())
		}
		seen[k.ID()] = true
		// A forbidden key's cooldown is short: once it ended, only the tried set
		// keeps this request off the key.
		p.FailKey(ctx, a, k, keypool.ReasonForbidden, keypool.Hint{After: time.Second, Known: true})
		clock.Advance(2 * time.Second)
	}
	_, err := p.Pick(ctx, keypool.Attempt{RequestID: "req-1", Number: 4})
	var ex *keypool.ExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("attempt 4: err = %v, want *ExhaustedError", err)
	}
	// Another request may take the keys again: their cooldowns ended.
	if got := mustPick(t, p, keypool.Attempt{RequestID: "req-2", Number: 2}); got.ID() != "k1" {
		t.Fatalf("another request picked %s, want k1", got.ID())
	}
}

func TestExhaustion(t *testing.T) {
	type mark struct {
		key    int // index into keys
		reason keypool.Reason
		after  time.Duration
	}
	tests := []struct {
		name           string
		marks          []mark
		wantKind       keypool.ExhaustionKind
		wantRetryAfter time.Duration
	}{
		{
			name:           "all rate limited: 429 with time to the soonest return",
			marks:          []mark{{0, keypool.ReasonRateLimited, 40 * time.Second}, {1, keypool.ReasonRateLimited, 12 * time.Second}},
			wantKind:       keypool.ExhaustedRateLimited,
			wantRetryAfter: 12 * time.Second,
		},
		{
			name:           "retry-after is rounded up to whole seconds",
			marks:          []mark{{0, keypool.ReasonRateLimited, 2500 * time.Millisecond}, {1, keypool.ReasonRateLimited, time.Minute}},
			wantKind:       keypool.ExhaustedRateLimited,
			wantRetryAfter: 3 * time.Second,
		},
		{
			name:           "retry-after is at least one second",
			marks:          []mark{{0, keypool.ReasonRateLimited, time.Second}, {1, keypool.ReasonRateLimited, time.Second}},
			wantKind:       keypool.ExhaustedRateLimited,
			wantRetryAfter: time.Second,
		},
		{
			name:     "all unauthorized: 502 without retry-after",
			marks:    []mark{{0, keypool.ReasonUnauthorized, 0}, {1, keypool.ReasonUnauthorized, 0}},
			wantKind: keypool.ExhaustedAuthFailed,
		},
		{
			name:     "unauthorized and forbidden: 502",
			marks:    []mark{{0, keypool.ReasonUnauthorized, 0}, {1, keypool.ReasonForbidden, 0}},
			wantKind: keypool.ExhaustedAuthFailed,
		},
		{
			name:           "a mix of unauthorized and rate limited: 429",
			marks:          []mark{{0, keypool.ReasonUnauthorized, time.Hour}, {1, keypool.ReasonRateLimited, 20 * time.Second}},
			wantKind:       keypool.ExhaustedRateLimited,
			wantRetryAfter: 20 * time.Second,
		},
		{
			name:           "a mix where a forbidden key returns first: retry-after follows it",
			marks:          []mark{{0, keypool.ReasonForbidden, 5 * time.Second}, {1, keypool.ReasonRateLimited, time.Minute}},
			wantKind:       keypool.ExhaustedRateLimited,
			wantRetryAfter: 5 * time.Second,
		},
		{
			name:     "all disabled by an operator: 503",
			marks:    []mark{{0, keypool.ReasonDisabled, 0}, {1, keypool.ReasonDisabled, 0}},
			wantKind: keypool.ExhaustedUnavailable,
		},
		{
			name:     "disabled and unauthorized: 502",
			marks:    []mark{{0, keypool.ReasonDisabled, 0}, {1, keypool.ReasonUnauthorized, 0}},
			wantKind: keypool.ExhaustedAuthFailed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			p := newTestPool(t, 2, clock)
			ctx := context.Background()
			keys := p.Status()
			for _, m := range tt.marks {
				k := keys[m.key].Key
				if m.reason == keypool.ReasonDisabled {
					if _, err := p.Disable(ctx, k.ID(), 0); err != nil {
						t.Fatal(err)
					}
					continue
				}
				p.FailKey(ctx, keypool.Attempt{}, k, m.reason, keypool.Hint{After: m.after, Known: m.after > 0})
			}
			_, err := p.Pick(ctx, keypool.Attempt{Number: 1})
			var ex *keypool.ExhaustedError
			if !errors.As(err, &ex) || !errors.Is(err, keypool.ErrExhausted) {
				t.Fatalf("Pick err = %v, want *ExhaustedError", err)
			}
			if ex.Kind != tt.wantKind || ex.RetryAfter != tt.wantRetryAfter {
				t.Errorf("got kind %s retry-after %s, want %s %s", ex.Kind, ex.RetryAfter, tt.wantKind, tt.wantRetryAfter)
			}
			if ex.Keys != 2 || ex.Pool != "p" {
				t.Errorf("got pool %q keys %d, want \"p\" 2", ex.Pool, ex.Keys)
			}
		})
	}
}

func TestTriedButRecoveredKeysGiveRetryableExhaustion(t *testing.T) {
	clock := newFakeClock()
	p := newTestPool(t, 1, clock)
	ctx := context.Background()
	a1 := keypool.Attempt{RequestID: "r", Number: 1}
	k := mustPick(t, p, a1)
	p.FailKey(ctx, a1, k, keypool.ReasonForbidden, keypool.Hint{After: time.Second, Known: true})
	clock.Advance(5 * time.Second) // the cooldown ended; the tried set (10s) holds
	_, err := p.Pick(ctx, keypool.Attempt{RequestID: "r", Number: 2})
	var ex *keypool.ExhaustedError
	if !errors.As(err, &ex) || ex.Kind != keypool.ExhaustedRateLimited || ex.RetryAfter != time.Second {
		t.Fatalf("Pick err = %#v, want rate-limited exhaustion with retry-after 1s", err)
	}
}

func TestEnableAndDisable(t *testing.T) {
	clock := newFakeClock()
	p := newTestPool(t, 2, clock)
	ctx := context.Background()
	if _, err := p.Disable(ctx, "k1", 0); err != nil {
		t.Fatal(err)
	}
	if got := mustPick(t, p, keypool.Attempt{Number: 1}); got.ID() != "k2" {
		t.Fatalf("k1 disabled: picked %s", got.ID())
	}
	clock.Advance(365 * 24 * time.Hour)
	if got := mustPick(t, p, keypool.Attempt{Number: 1}); got.ID() != "k2" {
		t.Fatalf("a year later k1 is still disabled: picked %s", got.ID())
	}
	if err := p.Enable(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if got := mustPick(t, p, keypool.Attempt{Number: 1}); got.ID() != "k1" {
		t.Fatalf("k1 enabled: picked %s", got.ID())
	}
	// Enable also ends a cooldown that a provider failure caused.
	k1 := p.Status()[0].Key
	p.FailKey(ctx, keypool.Attempt{}, k1, keypool.ReasonUnauthorized, keypool.Hint{})
	if err := p.Enable(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if st := p.Status()[0]; !st.Available(clock.Now()) {
		t.Fatalf("k1 after enable: %+v", st.Cooldown)
	}
	if err := p.Enable(ctx, "nope"); !errors.Is(err, keypool.ErrUnknownKey) {
		t.Fatalf("Enable(unknown) = %v, want ErrUnknownKey", err)
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

func TestKeyNeverPrintsItsValue(t *testing.T) {
	const secret = "test-secret-value-abcdefghijklmnop-WXYZ"
	k := keypool.NewKey("p", "primary", secret)
	js, err := json.Marshal(map[string]any{"key": k, "status": keypool.KeyStatus{Key: k}})
	if err != nil {
		t.Fatal(err)
	}
	outputs := []string{
		fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %q", k, k, k, k, k),
		fmt.Sprintf("%+v %#v", keypool.KeyStatus{Key: k}, []keypool.Key{k}),
		string(js), k.Ref(),
	}
	for _, out := range outputs {
		if strings.Contains(out, secret) || strings.Contains(out, secret[:20]) {
			t.Errorf("output shows the key value: %s", out)
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

func TestConcurrentWalkAndMark(t *testing.T) {
	clock := newFakeClock()
	p := newTestPool(t, 5, clock)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 32 {
		wg.Go(func() {
			for i := range 200 {
				id := fmt.Sprintf("req-%d-%d", g, i)
				used := map[string]bool{}
				for attempt := 1; attempt <= 6; attempt++ {
					a := keypool.Attempt{RequestID: id, Number: attempt}
					k, err := p.Pick(ctx, a)
					if errors.Is(err, keypool.ErrExhausted) {
						break
					}
					if err != nil {
						errs <- err
						return
					}
					if used[k.ID()] {
						errs <- fmt.Errorf("request %s reused key %s", id, k.ID())
						return
					}
					used[k.ID()] = true
					if (g+i+attempt)%3 != 0 {
						break // served
					}
					p.FailKey(ctx, a, k.Key, keypool.ReasonRateLimited, keypool.Hint{After: time.Millisecond, Known: true})
				}
				if i%50 == 0 {
					clock.Advance(time.Second)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestFirstPickAllocatesNothing(t *testing.T) {
	p := newTestPool(t, 3, newFakeClock())
	ctx := context.Background()
	a := keypool.Attempt{RequestID: "r", Number: 1}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := p.Pick(ctx, a); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a healthy first pick allocates %.0f times, want 0", allocs)
	}
}
