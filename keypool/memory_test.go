package keypool_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// TestMemoryStaysFlatOverAMillionRequests drives 1,000,000 requests (200,000 under
// the race detector, 100,000 with -short) through a pool in memory, 10% of them failing over (the request's own
// failure, now and then a rate limit with a short cooldown or an unconfirmed 429), on a fake clock
// at 1,000 requests per second, and checks that the heap after the load is within
// 10% of the heap before it: finished requests are forgotten, cooldowns and probes
// leave nothing behind. Run with -v for the figures.
func TestMemoryStaysFlatOverAMillionRequests(t *testing.T) {
	requests := 1_000_000
	switch {
	case testing.Short():
		requests = 100_000
	case raceEnabled:
		requests = 200_000
	}
	clock := newFakeClock()
	state := keypool.NewMemoryState(clock, 0)
	p, err := keypool.NewPool(keypool.PoolOptions{Name: "p", Keys: testKeys(4), State: state, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var exhausted, failedOver int
	run := func(from, to int, finishRetries bool) {
		for i := from; i < to; i++ {
			clock.Advance(time.Millisecond)
			id := fmt.Sprintf("%08x-4c59-9d0e-0d8f3a1e2b44", i)
			a := keypool.Attempt{RequestID: id, Number: 1}
			pk, err := p.Pick(ctx, a)
			if errors.Is(err, keypool.ErrExhausted) {
				exhausted++
				continue
			}
			// A probe succeeds: the keys recover from their short cooldowns.
			if i%10 == 0 && !pk.Probing() {
				// Mostly the request's own failure; one in 1,000 requests a rate
				// limit (1s), one in 1,000 an unconfirmed 429: the pool's 4 keys
				// keep up with that, probes included.
				class := keypool.ClassRequestTooLarge
				switch i % 1000 {
				case 0:
					class = keypool.ClassRateLimited
				case 500:
					class = keypool.ClassRateLimitUnconfirmed
				}
				out := p.Fail(ctx, a, pk, keypool.Failure{Class: class, Hint: keypool.Hint{After: time.Second, Known: true}})
				if !out.Retry {
					continue
				}
				a.Number = 2
				if pk, err = p.Pick(ctx, a); err != nil {
					exhausted++
					continue
				}
				failedOver++
				if !finishRetries {
					p.Release(ctx, a, pk) // the stream ends with no answer: only the TTL forgets
					continue
				}
			}
			p.Finish(ctx, a, pk, keypool.Headroom{})
		}
	}
	warm := 20_000
	run(0, warm, true)
	exhausted, failedOver = 0, 0
	before, rssBefore := heapInUse(), rss()
	run(warm, warm+requests, true)
	after, rssAfter := heapInUse(), rss()
	t.Logf("%d requests, %d failed over, %d exhausted: heap %d → %d B (%.3f×), RSS %d → %d kB, tried sets held %d",
		requests, failedOver, exhausted, before, after, float64(after)/float64(before), rssBefore, rssAfter, state.Requests())
	if failedOver < requests/20 || exhausted > requests/100 {
		t.Errorf("the load is not the one meant: %d failed over, %d exhausted", failedOver, exhausted)
	}
	if float64(after) > 1.1*float64(before) {
		t.Errorf("heap grew from %d to %d B over the load", before, after)
	}
	if n := state.Requests(); n > 100 {
		t.Errorf("%d tried sets held after every request finished", n)
	}

	// Retries whose answer never comes are forgotten by the TTL: at most two TTLs
	// of them are held (100 failovers per second here).
	run(warm+requests, warm+requests+requests/10, false)
	limit := int(2 * keypool.DefaultTriedTTL / time.Second * 100)
	if n := state.Requests(); n > limit {
		t.Errorf("%d tried sets held with unfinished retries, want at most %d (two TTLs)", n, limit)
	}
	t.Logf("unfinished retries: %d tried sets held (bound %d)", state.Requests(), limit)
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// rss is the process's resident set in kB (Linux), for the log only.
func rss() int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			var kb int
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb
		}
	}
	return 0
}
