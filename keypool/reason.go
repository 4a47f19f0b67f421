package keypool

import "fmt"

// Reason says why a key is cooling down.
type Reason string

// The reasons a key cools down.
const (
	// ReasonRateLimited: the provider answered 429 for the key.
	ReasonRateLimited Reason = "rate_limited"
	// ReasonUnauthorized: the provider answered 401 (invalid, revoked or deactivated key).
	ReasonUnauthorized Reason = "unauthorized"
	// ReasonForbidden: the provider answered 403. Often not about the key (region,
	// model access), so its default cooldown is short.
	ReasonForbidden Reason = "forbidden"
	// ReasonQuota: the key's account is out of credit or billing quota.
	ReasonQuota Reason = "quota"
	// ReasonDepleted: a successful response said the key's limit is spent (remaining
	// requests 0, or tokens below the floor): the key is taken out until the provider's
	// reset, before any request pays a 429 for it.
	ReasonDepleted Reason = "depleted"
	// ReasonDisabled: an operator took the key out of rotation.
	ReasonDisabled Reason = "disabled"
)

// Reasons lists every reason, in a stable order.
func Reasons() []Reason {
	return []Reason{ReasonRateLimited, ReasonUnauthorized, ReasonForbidden, ReasonQuota, ReasonDepleted, ReasonDisabled}
}

// ParseReason returns the Reason named s.
func ParseReason(s string) (Reason, error) {
	for _, r := range Reasons() {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("unknown reason %q (want one of %v)", s, Reasons())
}

// authFailure reports whether r says the provider refused the key itself.
func (r Reason) authFailure() bool {
	return r == ReasonUnauthorized || r == ReasonForbidden
}
