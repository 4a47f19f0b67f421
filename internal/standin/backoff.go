package standin

import (
	"math/bits"
	"time"
)

// jitteredBackoff is JitteredExponentialBackOffStrategy in
// source/common/common/backoff_strategy.cc, as retry_state_impl.cc uses it: the n-th
// retry waits a uniformly random time in [0, interval_n), interval_0 = base, each
// interval doubling until it reaches max. Fully jittered, so retries of requests that
// failed together spread out.
type jitteredBackoff struct {
	next  uint64 // milliseconds
	max   uint64
	rand  func() uint64
	limit uint64
}

func newJitteredBackoff(base, max time.Duration, rand func() uint64) *jitteredBackoff {
	b := uint64(base.Milliseconds())
	if b == 0 {
		b = 1
	}
	m := uint64(max.Milliseconds())
	if m < b {
		m = b
	}
	return &jitteredBackoff{next: b, max: m, rand: rand, limit: m / 2}
}

func (b *jitteredBackoff) nextBackoff() time.Duration {
	interval := b.next
	if b.next <= b.limit && b.next < (1<<(bits.UintSize-2)) {
		b.next *= 2
	} else {
		b.next = b.max
	}
	return time.Duration(b.rand()%interval) * time.Millisecond
}

// lowerBoundBackoff is JitteredLowerBoundBackOffStrategy: a delay in
// [min, 1.5 × min), used once for a rate-limited response's reset header.
func lowerBoundBackoff(min time.Duration, rand func() uint64) time.Duration {
	ms := uint64(min.Milliseconds())
	if ms < 2 {
		return min
	}
	upper := ms * 3 / 2
	return time.Duration(ms+rand()%(upper-ms)) * time.Millisecond
}
