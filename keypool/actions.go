package keypool

import (
	"errors"
	"fmt"
	"time"
)

// FailurePolicy says what a pool does about each failure class.
type FailurePolicy struct {
	// Actions maps a class to its action; a class missing from it keeps its
	// default ([DefaultActions]).
	Actions map[Class]Action
	// Quorum is how many distinct requests must see a class on a scope within
	// Window before the corroborate action cools it. Default 3.
	Quorum int
	// Window is the corroborate action's window. Default 10s.
	Window time.Duration
}

// The corroborate action's defaults.
const (
	DefaultQuorum = 3
	DefaultWindow = 10 * time.Second
)

// DefaultActions is the action of each class unless a pool's configuration says
// otherwise:
//   - rate_limited → cool: the provider said the key's window is spent and when
//     it refills; every request would get the same answer.
//   - rate_limit_unconfirmed → corroborate: a 429 with no rate-limit signal may
//     be the key's or a provider-wide spike; three requests must agree.
//   - quota → cool: the account is out of credit; its long cooldown (1h by
//     default) lets an operator pay or enable the key.
//   - unauthorized → cool: the key is invalid or revoked; it returns after its
//     long cooldown or by an operator's enable.
//   - forbidden → corroborate: a 403 is as often about the request (model access,
//     region) as about the key; one client must not be able to cool the pool.
//   - request_too_large → failover: the request exceeds this key's limit; another
//     key may have a higher one, and the key is fine for everyone else.
//   - overloaded → pass: the provider is overloaded; another key would get the
//     same answer, and the client (or its SDK) retries with back-off.
func DefaultActions() map[Class]Action {
	return map[Class]Action{
		ClassRateLimited:          ActionCool,
		ClassRateLimitUnconfirmed: ActionCorroborate,
		ClassQuota:                ActionCool,
		ClassUnauthorized:         ActionCool,
		ClassForbidden:            ActionCorroborate,
		ClassRequestTooLarge:      ActionFailover,
		ClassOverloaded:           ActionPass,
	}
}

// DefaultFailurePolicy is DefaultActions with the default quorum and window.
func DefaultFailurePolicy() FailurePolicy {
	return FailurePolicy{Actions: DefaultActions(), Quorum: DefaultQuorum, Window: DefaultWindow}
}

// withDefaults returns fp with the defaults filled in, in a map of its own.
func (fp FailurePolicy) withDefaults() FailurePolicy {
	out := DefaultFailurePolicy()
	for c, a := range fp.Actions {
		out.Actions[c] = a
	}
	if fp.Quorum != 0 {
		out.Quorum = fp.Quorum
	}
	if fp.Window != 0 {
		out.Window = fp.Window
	}
	return out
}

// Validate reports an unknown class or action and a quorum or window that cannot
// work.
func (fp FailurePolicy) Validate() error {
	var errs []error
	for c, a := range fp.Actions {
		if _, err := ParseClass(string(c)); err != nil {
			errs = append(errs, err)
		}
		if _, err := ParseAction(string(a)); err != nil {
			errs = append(errs, fmt.Errorf("class %s: %w", c, err))
		}
	}
	if fp.Quorum < 0 {
		errs = append(errs, fmt.Errorf("corroborate quorum %d is negative", fp.Quorum))
	}
	if fp.Window < 0 {
		errs = append(errs, fmt.Errorf("corroborate window %s is negative", fp.Window))
	}
	return errors.Join(errs...)
}

// Action is the action for class c. A class the policy does not know (a newer
// provider package) fails the request over and cools nothing: the safe choice
// for an answer nobody classified.
func (fp FailurePolicy) Action(c Class) Action {
	if a, ok := fp.Actions[c]; ok {
		return a
	}
	return ActionFailover
}

// HeadroomPolicy says when a successful answer's remaining limits take a scope out
// before it answers 429 (reason depleted).
type HeadroomPolicy struct {
	// MinTokens is the token floor: a key whose remaining tokens fall below it is
	// taken out until the tokens reset. 0 (the zero value) lets only remaining
	// requests steer; 1 steers when no token is left (the configuration's default,
	// DefaultMinTokens); a typical request's size steers before a request fails.
	MinTokens int64
}

// DefaultMinTokens is the configuration's default token floor: steer away from a
// key with no token left.
const DefaultMinTokens = 1

// depletedFor is how long headroom h takes a scope out, and whether it does:
// remaining requests at 0, or remaining tokens below the floor, take it out until
// that limit's reset (the later one when both are spent); a reset the provider did
// not give falls back to the depleted rule's default.
func (hp HeadroomPolicy) depletedFor(h Headroom, rules Policy) (time.Duration, bool) {
	var (
		spent bool
		wait  time.Duration
	)
	take := func(r Remaining) {
		spent = true
		hint := Hint{After: r.Reset, Known: r.Reset > 0}
		wait = max(wait, rules.Duration(ReasonDepleted, hint))
	}
	if h.Requests.Known && h.Requests.Left <= 0 {
		take(h.Requests)
	}
	if h.Tokens.Known && hp.MinTokens > 0 && h.Tokens.Left < hp.MinTokens {
		take(h.Tokens)
	}
	return wait, spent
}
