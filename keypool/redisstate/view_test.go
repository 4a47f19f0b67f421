package redisstate

import (
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// apply records a state read from Redis the way the State does.
func apply(v *view, pool, ref string, s stored) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.applyLocked(pool, ref, s)
}

// The local view's rules, without Redis: what a replica believes after updates
// that reach it in any order.
func TestLocalViewKeepsTheNewestChange(t *testing.T) {
	now := time.Now()
	hour := keypool.Cooldown{Until: now.Add(time.Hour), Reason: keypool.ReasonUnauthorized}
	minute := keypool.Cooldown{Until: now.Add(time.Minute), Reason: keypool.ReasonRateLimited}
	available := keypool.Cooldown{}

	type update struct {
		c   keypool.Cooldown
		seq int64
	}
	tests := []struct {
		name     string
		local    *keypool.Cooldown // a mark Redis did not store
		override *keypool.Cooldown // an operator's action Redis did not store
		updates  []update
		want     keypool.Cooldown
	}{
		{"a later change replaces an earlier one, shorter or not", nil, nil,
			[]update{{hour, 1}, {minute, 2}}, minute},
		{"an earlier change arriving late is ignored", nil, nil,
			[]update{{available, 5}, {hour, 4}}, available},
		{"the same change twice changes nothing", nil, nil,
			[]update{{minute, 3}, {minute, 3}}, minute},
		{"a local mark Redis lacks survives an older or shorter change", &hour, nil,
			[]update{{minute, 3}, {available, 4}}, hour},
		{"a local mark yields to a later deadline", &minute, nil,
			[]update{{hour, 3}}, hour},
		{"a local enable survives a change until it is pushed", nil, &available,
			[]update{}, available},
		{"a local disable is not shortened by a mark", nil, &hour,
			[]update{{minute, 9}}, hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newView(time.Minute)
			if tt.local != nil {
				v.markLocal("p", "k", *tt.local, now)
			}
			if tt.override != nil {
				v.overrideLocal("p", "k", *tt.override, now)
			}
			for _, u := range tt.updates {
				apply(v, "p", "k", stored{c: u.c, seq: u.seq})
			}
			if got := v.cooldown("p", "k"); got != tt.want {
				t.Errorf("view = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestLocalViewPublishesOnlyChanges(t *testing.T) {
	now := time.Now()
	minute := keypool.Cooldown{Until: now.Add(time.Minute), Reason: keypool.ReasonRateLimited}
	v := newView(time.Minute)
	if !apply(v, "p", "k", stored{c: minute, seq: 7}) {
		t.Fatal("a new state did not change the view")
	}
	cells := v.cells.Load()
	// The replica's own notification, after the script's reply applied the change.
	if apply(v, "p", "k", stored{c: minute, seq: 7}) {
		t.Error("the same change applied twice")
	}
	apply(v, "p", "k", stored{c: keypool.Cooldown{}, seq: 8})
	if v.cells.Load() != cells {
		t.Error("a change to a known key copied the published map; want an O(1) store into its cell")
	}
	if got := v.cooldown("p", "k"); got != (keypool.Cooldown{}) {
		t.Errorf("after an enable: %+v, want available", got)
	}
}

func TestLocalViewAfterAResync(t *testing.T) {
	now := time.Now()
	hour := keypool.Cooldown{Until: now.Add(time.Hour), Reason: keypool.ReasonUnauthorized}
	minute := keypool.Cooldown{Until: now.Add(time.Minute), Reason: keypool.ReasonRateLimited}

	t.Run("a key Redis holds nothing for is dropped", func(t *testing.T) {
		v := newView(time.Minute)
		apply(v, "p", "gone", stored{c: hour, seq: 10})
		v.resynced("p", map[string]*stored{"gone": nil}, nil)
		if v.cooldown("p", "gone") != (keypool.Cooldown{}) {
			t.Error("kept a cooldown Redis does not hold")
		}
	})
	t.Run("an enable in Redis (a tombstone) replaces an older mark", func(t *testing.T) {
		v := newView(time.Minute)
		apply(v, "p", "k", stored{c: hour, seq: 10})
		v.resynced("p", map[string]*stored{"k": {seq: 20}}, nil)
		if v.cooldown("p", "k") != (keypool.Cooldown{}) {
			t.Error("kept a cooldown an operator ended")
		}
	})
	t.Run("a pushed local mark is no longer pending", func(t *testing.T) {
		v := newView(time.Minute)
		v.markLocal("p", "k", minute, now)
		push := v.toPush("p", now)
		if len(push) != 1 || push[0].mode != "p" {
			t.Fatalf("toPush = %+v, want the pending mark", push)
		}
		v.resynced("p", map[string]*stored{"k": {c: minute, seq: 50}}, push)
		if e := v.pools["p"].entries["k"]; e.pending != pendingNone || e.seq != 50 {
			t.Errorf("entry after the push = %+v, want confirmed at seq 50", e)
		}
	})
	t.Run("a local mark made during the resync stays pending", func(t *testing.T) {
		v := newView(time.Minute)
		v.markLocal("p", "k", minute, now)
		push := v.toPush("p", now)
		v.markLocal("p", "k", hour, now)
		v.resynced("p", map[string]*stored{"k": {c: minute, seq: 50}}, push)
		if e := v.pools["p"].entries["k"]; e.pending == pendingNone || e.c != hour {
			t.Errorf("entry = %+v, want the later mark still pending", e)
		}
	})
	t.Run("what a resync pushes, by what the view holds", func(t *testing.T) {
		v := newView(time.Minute)
		apply(v, "p", "confirmed", stored{c: hour, seq: 3})
		apply(v, "p", "ending", stored{c: keypool.Cooldown{Until: now.Add(lostGrace / 2), Reason: keypool.ReasonRateLimited}, seq: 4})
		v.markLocal("p", "failed", minute, now)
		v.overrideLocal("p", "enabled", keypool.Cooldown{}, now)
		want := map[string]string{"confirmed": "v", "ending": "r", "failed": "p", "enabled": "o"}
		for _, p := range v.toPush("p", now) {
			if want[p.ref] != p.mode {
				t.Errorf("%s pushed as %q, want %q", p.ref, p.mode, want[p.ref])
			}
			delete(want, p.ref)
		}
		if len(want) != 0 {
			t.Errorf("not offered to the resync: %v", want)
		}
	})
}

func TestLocalTriedKeysExpire(t *testing.T) {
	v := newView(time.Minute)
	now := time.Now()
	v.recordTried("p", "k1", "r", now)
	v.recordTried("p", "k2", "r", now)
	if got := v.localRequestView("p", nil, "r", now.Add(59*time.Second)).Tried; len(got) != 2 {
		t.Errorf("tried within the TTL = %v, want both keys", got)
	}
	if got := v.localRequestView("p", nil, "r", now.Add(time.Minute)).Tried; len(got) != 0 {
		t.Errorf("tried after the TTL = %v, want none", got)
	}
}
