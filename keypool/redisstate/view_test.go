package redisstate

import (
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// apply records a state read from Redis the way the State does.
func apply(v *view, pool, ref string, s stored, epoch string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.publishLocked()
	return v.applyLocked(pool, ref, s, epoch)
}

// The local view's rules, without Redis: what a replica believes after updates
// that reach it in any order.
func TestLocalViewKeepsTheNewestChange(t *testing.T) {
	now := time.Now()
	hour := keypool.Cooldown{Until: now.Add(time.Hour), Reason: keypool.ReasonUnauthorized}
	minute := keypool.Cooldown{Until: now.Add(time.Minute), Reason: keypool.ReasonRateLimited}
	available := keypool.Cooldown{}

	type update struct {
		c     keypool.Cooldown
		seq   int64
		epoch string
	}
	tests := []struct {
		name    string
		synced  string // epoch of the last resync; "" for none
		local   *keypool.Cooldown
		updates []update
		want    keypool.Cooldown
		resync  bool
	}{
		{"a later change replaces an earlier one, shorter or not", "e1", nil,
			[]update{{hour, 1, "e1"}, {minute, 2, "e1"}}, minute, false},
		{"an earlier change arriving late is ignored", "e1", nil,
			[]update{{available, 5, "e1"}, {hour, 4, "e1"}}, available, false},
		{"before the first resync every epoch is taken", "", nil,
			[]update{{hour, 1, "e9"}}, hour, false},
		{"a change from another epoch merges by the later deadline and asks for a resync", "e1", nil,
			[]update{{hour, 7, "e1"}, {minute, 1, "e2"}}, hour, true},
		{"a local mark Redis lacks survives an older or shorter change", "e1", &hour,
			[]update{{minute, 3, "e1"}, {available, 4, "e1"}}, hour, false},
		{"a local mark yields to a later deadline", "e1", &minute,
			[]update{{hour, 3, "e1"}}, hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newView(time.Minute)
			v.poolLocked("p").epoch = tt.synced
			if tt.local != nil {
				v.markLocal("p", "k", *tt.local)
			}
			resync := false
			for _, u := range tt.updates {
				if !apply(v, "p", "k", stored{c: u.c, seq: u.seq}, u.epoch) {
					resync = true
				}
			}
			if got := v.cooldown("p", "k"); got != tt.want {
				t.Errorf("view = %+v, want %+v", got, tt.want)
			}
			if resync != tt.resync {
				t.Errorf("asks for a resync = %v, want %v", resync, tt.resync)
			}
		})
	}
}

func TestLocalViewAfterAResync(t *testing.T) {
	now := time.Now()
	hour := keypool.Cooldown{Until: now.Add(time.Hour), Reason: keypool.ReasonUnauthorized}
	minute := keypool.Cooldown{Until: now.Add(time.Minute), Reason: keypool.ReasonRateLimited}

	t.Run("a key Redis no longer holds is dropped unless changed since the read", func(t *testing.T) {
		v := newView(time.Minute)
		apply(v, "p", "old", stored{c: hour, seq: 10}, "e1")
		apply(v, "p", "new", stored{c: hour, seq: 30}, "e1")
		v.resynced("p", "e1", false, 20, map[string]stored{}, nil)
		if v.cooldown("p", "old") != (keypool.Cooldown{}) {
			t.Error("kept a cooldown Redis dropped (an operator's enable)")
		}
		if v.cooldown("p", "new") != hour {
			t.Error("dropped a change newer than the read")
		}
	})
	t.Run("a pushed local mark is no longer pending", func(t *testing.T) {
		v := newView(time.Minute)
		v.markLocal("p", "k", minute)
		_, push := v.toPush("p", now)
		if len(push) != 1 || !push[0].pending {
			t.Fatalf("toPush = %+v, want the pending mark", push)
		}
		v.resynced("p", "e1", false, 50, map[string]stored{"k": {c: minute, seq: 50}}, push)
		if e := v.pools["p"].entries["k"]; e.pending || e.seq != 50 {
			t.Errorf("entry after the push = %+v, want confirmed at seq 50", e)
		}
	})
	t.Run("a local mark made during the resync stays pending", func(t *testing.T) {
		v := newView(time.Minute)
		v.markLocal("p", "k", minute)
		_, push := v.toPush("p", now)
		v.markLocal("p", "k", hour)
		v.resynced("p", "e1", false, 50, map[string]stored{"k": {c: minute, seq: 50}}, push)
		if e := v.pools["p"].entries["k"]; !e.pending || e.c != hour {
			t.Errorf("entry = %+v, want the later mark still pending", e)
		}
	})
	t.Run("Redis that lost the pool rebuilds it from the read", func(t *testing.T) {
		v := newView(time.Minute)
		v.poolLocked("p").epoch = "e1"
		apply(v, "p", "gone", stored{c: hour, seq: 900}, "e1")
		v.resynced("p", "e2", true, 3, map[string]stored{"k": {c: minute, seq: 2}}, nil)
		if v.cooldown("p", "gone") != (keypool.Cooldown{}) || v.cooldown("p", "k") != minute {
			t.Errorf("view = gone %+v, k %+v; want only what Redis holds now", v.cooldown("p", "gone"), v.cooldown("p", "k"))
		}
		if v.pools["p"].epoch != "e2" {
			t.Errorf("epoch = %q, want e2", v.pools["p"].epoch)
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
