// Package fakeclock is a clock that tests set and move, so cooldowns are tested
// without waiting. It satisfies keypool.Clock and is safe for concurrent use.
package fakeclock

import (
	"sync"
	"time"
)

// Clock reads the time it was set to, until moved.
type Clock struct {
	mu sync.Mutex // protects t
	t  time.Time
}

// New returns a Clock reading t.
func New(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock d forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
