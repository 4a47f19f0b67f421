package redisstate

import (
	"errors"
	"fmt"
)

// ErrPending is wrapped by the error of Override when the operator's change was
// applied to this replica's view but Redis could not take it: this replica acts
// on it at once, the others once Redis returns and this replica pushes it.
var ErrPending = errors.New("applied on this replica, pending propagation to the others")

// PendingError is the error of an Override that is applied on this replica and
// waits for Redis. It wraps ErrPending, ErrUnavailable and the Redis error.
type PendingError struct {
	Pool, Ref string
	Err       error
}

func (e *PendingError) Error() string {
	return fmt.Sprintf("redisstate: key %s of pool %q: %v; redis unreachable (%v): the change reaches the other replicas when redis returns",
		e.Ref, e.Pool, ErrPending, e.Err)
}

func (e *PendingError) Unwrap() []error { return []error{ErrPending, ErrUnavailable, e.Err} }

// PendingPropagation reports that the change is in force on this replica and
// not yet on the others. It lets a caller that does not import this package
// (the admin API) recognise the case with errors.As on an interface.
func (e *PendingError) PendingPropagation() bool { return true }
