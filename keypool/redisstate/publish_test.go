package redisstate

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// startPublisher runs the view's publisher until the test ends.
func startPublisher(t *testing.T, v *view) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); v.publishLoop(ctx, time.Now) }()
	t.Cleanup(func() { cancel(); <-done })
}

func cooled(version int64, until time.Time) keyState {
	return keyState{v: version, scopes: map[string]scopeState{"": {e: keypool.Entry{
		Cooldown: keypool.Cooldown{Until: until, Reason: keypool.ReasonRateLimited}, Span: time.Hour}}}}
}

// A call's reply is in force when the call returns, even when the call's own
// notification reached the view first and the publisher is still copying it.
func TestReplyIsPublishedWhenTheCallReturns(t *testing.T) {
	v := newView(time.Minute)
	startPublisher(t, v)
	now := time.Now()
	refs := testKeys("openai", 200)
	for i, k := range refs {
		until := now.Add(time.Hour + time.Duration(i)*time.Millisecond)
		ks := cooled(int64(i+1), until)
		v.applyNotified("openai", k.Ref(), ks, now) // the notification first
		v.apply("openai", k.Ref(), ks, now)         // then the reply, same version
		if got := v.get("openai").Entries[keypool.Scope{Ref: k.Ref()}].Until; !got.Equal(until) {
			t.Fatalf("key %d: the View shows %v when the reply is applied, want %v", i, got, until)
		}
	}
}

// However notifications and replies interleave, the View ends up showing
// every key's newest state.
func TestViewConvergesUnderInterleavedNotificationsAndReplies(t *testing.T) {
	v := newView(time.Minute)
	startPublisher(t, v)
	now := time.Now()
	keys := testKeys("openai", 50)
	const rounds = 40
	until := func(key, round int) time.Time {
		return now.Add(time.Hour + time.Duration(key*rounds+round)*time.Millisecond)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for round := range rounds {
				for i, k := range keys {
					ks := cooled(int64(i*rounds+round+1), until(i, round))
					if (w+round+i)%2 == 0 {
						v.applyNotified("openai", k.Ref(), ks, now)
					} else {
						v.apply("openai", k.Ref(), ks, now)
					}
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, "the View shows every key's last state", func() bool {
		entries := v.get("openai").Entries
		if len(entries) != len(keys) {
			return false
		}
		for i, k := range keys {
			if !entries[keypool.Scope{Ref: k.Ref()}].Until.Equal(until(i, rounds-1)) {
				return false
			}
		}
		return true
	})
}

// A burst of notifications to a large View is published in far fewer copies
// of the View than notifications, and a scope that retired leaves the View.
func TestBurstOfNotificationsIsPublishedInFewCopies(t *testing.T) {
	v := newView(time.Minute)
	startPublisher(t, v)
	now := time.Now()
	keys := testKeys("openai", 500)
	for i, k := range keys {
		v.applyNotified("openai", k.Ref(), cooled(int64(i+1), now.Add(time.Hour)), now)
	}
	waitFor(t, "the View shows the burst", func() bool {
		pv := v.get("openai")
		return pv != nil && len(pv.Entries) == len(keys)
	})
	v.mu.Lock()
	copies := v.generation["openai"]
	v.mu.Unlock()
	t.Logf("%d notifications published in %d Views", len(keys), copies)
	// Up to inlinePublication scopes, each notification publishes its View;
	// past it, at least two notifications per copy.
	if limit := uint64(inlinePublication + (len(keys)-inlinePublication)/2); copies >= limit {
		t.Errorf("%d notifications published in %d Views, want fewer than %d", len(keys), copies, limit)
	}

	// A scope whose retirement passed goes at the next change.
	retired := cooled(int64(len(keys)+1), now.Add(-2*time.Hour)) // retired an hour (its span) later
	v.apply("openai", keys[0].Ref(), retired, now)
	v.apply("openai", keys[1].Ref(), cooled(int64(len(keys)+2), now.Add(2*time.Hour)), now)
	if _, ok := v.get("openai").Entries[keypool.Scope{Ref: keys[0].Ref()}]; ok {
		t.Errorf("a retired scope is still in the View")
	}
	if n := len(v.get("openai").Entries); n != len(keys)-1 {
		t.Errorf("%d scopes in the View, want %d", n, len(keys)-1)
	}
}
