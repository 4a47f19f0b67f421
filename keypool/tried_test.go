package keypool_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func TestTriedSetLivesATTLFromTheLastFailure(t *testing.T) {
	s := keypool.NewTriedSet(10 * time.Second)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		at   time.Duration
		add  string // "" reads only
		want []string
	}{
		{0, "a", []string{"a"}},
		{8 * time.Second, "b", []string{"a", "b"}},
		{8 * time.Second, "b", []string{"a", "b"}}, // a ref is recorded once
		{17 * time.Second, "", []string{"a", "b"}}, // 9s after the last failure
		{18 * time.Second, "", nil},                // 10s after it
		{19 * time.Second, "c", []string{"c"}},     // a new set
	}
	for _, st := range steps {
		var got []string
		if st.add != "" {
			got = s.Add("p", "req", st.add, t0.Add(st.at))
		} else {
			got = s.Get("p", "req", t0.Add(st.at))
		}
		if !slices.Equal(got, st.want) {
			t.Fatalf("at +%s: %v, want %v", st.at, got, st.want)
		}
	}
	if got := s.Get("other-pool", "req", t0.Add(19*time.Second)); got != nil {
		t.Errorf("another pool's request of the same id: %v, want none", got)
	}
	s.Forget("p", "req")
	if got := s.Get("p", "req", t0.Add(19*time.Second)); got != nil {
		t.Errorf("after Forget: %v", got)
	}
}

func TestTriedSetReleasesMemoryWithoutAScan(t *testing.T) {
	s := keypool.NewTriedSet(time.Second)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 10_000 {
		s.Add("p", fmt.Sprint("old-", i), "k1", t0)
	}
	if n := s.Len(); n != 10_000 {
		t.Fatalf("Len = %d, want 10000", n)
	}
	// Two TTLs later, new requests reach every shard: each drops its old
	// generations wholesale.
	later := t0.Add(2 * time.Second)
	for i := range 1_000 {
		s.Add("p", fmt.Sprint("new-", i), "k1", later)
	}
	if n := s.Len(); n != 1_000 {
		t.Errorf("Len = %d after two TTLs, want only the 1000 new requests", n)
	}
}

func TestTriedSetKeepsRequestIDsBounded(t *testing.T) {
	s := keypool.NewTriedSet(0)
	long := strings.Repeat("x", 1<<20)
	now := time.Now()
	s.Add("p", long, "k1", now)
	if got := s.Get("p", long, now); !slices.Equal(got, []string{"k1"}) {
		t.Errorf("a 1 MiB request id: %v", got)
	}
	if got := s.Get("p", long[:len(long)-1], now); got != nil {
		t.Errorf("a different id: %v", got)
	}
	for _, id := range []string{"", "r", long} {
		if k := keypool.RequestKey(id); len(k) != keypool.RequestKeyLen || strings.ContainsAny(k, "{}: ") {
			t.Errorf("RequestKey(%d bytes) = %q, want %d safe characters", len(id), k, keypool.RequestKeyLen)
		}
	}
}

// TestFinishedRequestsAreForgotten: the answer that ends a request (a healthy
// answer, the provider's own answer, or the exhaustion answer) forgets its tried
// set at once, instead of waiting for the TTL.
func TestFinishedRequestsAreForgotten(t *testing.T) {
	tests := []struct {
		name string
		end  func(h *harness)
	}{
		{"a healthy answer on the retry", func(h *harness) { h.serve(attempt("r", 2)) }},
		{"the provider's answer when nothing is left", func(h *harness) {
			a := attempt("r", 2)
			if out := h.fail(a, h.pick(a), keypool.ClassRequestTooLarge, 0); out.Retry {
				h.t.Fatal("a retry with no key left")
			}
		}},
		{"the exhaustion answer", func(h *harness) {
			a := attempt("r", 2)
			h.fail(a, h.pick(a), keypool.ClassRateLimited, time.Minute)
			h.exhausted(attempt("r", 3))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := keypool.NewMemoryState(newFakeClock(), time.Hour)
			h := newHarness(t, 2, func(o *keypool.PoolOptions) { o.State = state })
			a := attempt("r", 1)
			h.fail(a, h.pick(a), keypool.ClassRequestTooLarge, 0)
			if got := state.Tried(h.ctx, "p", "r"); len(got) != 1 {
				t.Fatalf("tried after the failure: %v", got)
			}
			tt.end(h)
			if got := state.Tried(h.ctx, "p", "r"); got != nil {
				t.Errorf("tried after the request ended: %v, want forgotten", got)
			}
		})
	}
}

func TestAHealthyFirstAttemptForgetsNothing(t *testing.T) {
	h := newHarness(t, 2)
	h.pick(attempt("warm", 1))
	h.state.take()
	h.serve(attempt("r", 1))
	if calls := h.state.take(); len(calls) != 0 {
		t.Errorf("a healthy first attempt called the state: %v", calls)
	}
}
