package keypool

import "time"

// Clock tells the time. Cooldowns are computed against it so tests can move time
// without waiting.
type Clock interface {
	Now() time.Time
}

// ClockFunc adapts a function to a Clock.
type ClockFunc func() time.Time

// Now returns f().
func (f ClockFunc) Now() time.Time { return f() }

// now reads c, falling back to the system clock when c is nil.
func now(c Clock) time.Time {
	if c == nil {
		return time.Now()
	}
	return c.Now()
}
