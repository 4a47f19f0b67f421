package keypool

import (
	"fmt"
	"time"
)

// Cooldown is a key's state: cooling down until Until for Reason, or available (the
// zero value, or any Cooldown whose Until has passed).
type Cooldown struct {
	Until  time.Time
	Reason Reason
}

// ActiveAt reports whether the key is still cooling down at t.
func (c Cooldown) ActiveAt(t time.Time) bool { return t.Before(c.Until) }

// Rule bounds the cooldown for one reason.
type Rule struct {
	// Default applies when the provider gave no usable hint.
	Default time.Duration
	// Min and Max clamp every cooldown, hinted or not.
	Min, Max time.Duration
}

// Validate reports a rule whose bounds contradict each other.
func (r Rule) Validate() error {
	switch {
	case r.Min < 0:
		return fmt.Errorf("min %s is negative", r.Min)
	case r.Min > r.Max:
		return fmt.Errorf("min %s is greater than max %s", r.Min, r.Max)
	case r.Default < r.Min || r.Default > r.Max:
		return fmt.Errorf("default %s is outside [min %s, max %s]", r.Default, r.Min, r.Max)
	}
	return nil
}

// Policy holds the cooldown rule of each reason a pool marks keys for.
type Policy map[Reason]Rule

// DefaultPolicy returns the rules a pool uses unless its configuration says otherwise.
//   - rate_limited: 30s by default, clamped to [1s, 1h]: providers' reset hints are honoured.
//   - unauthorized: 1h by default, clamped to [1m, 24h]: long, yet never permanent.
//   - forbidden: 30s by default, clamped to [1s, 10m]: a 403 is often about the request
//     (region, model access), so a storm of them cannot empty the pool for long.
//   - quota: 1h by default, clamped to [1m, 24h]: an account out of credit comes back
//     when someone pays, which takes hours.
//   - depleted: the provider's reset time, 10s when it gave none (Azure sends no
//     reset), clamped to [100ms, 1h]: a short guess, since the probe that follows
//     finds out whether the limit refilled.
//   - disabled: an operator's action, 10 years unless the operator gives a duration.
func DefaultPolicy() Policy {
	return Policy{
		ReasonRateLimited:  {Default: 30 * time.Second, Min: time.Second, Max: time.Hour},
		ReasonUnauthorized: {Default: time.Hour, Min: time.Minute, Max: 24 * time.Hour},
		ReasonForbidden:    {Default: 30 * time.Second, Min: time.Second, Max: 10 * time.Minute},
		ReasonQuota:        {Default: time.Hour, Min: time.Minute, Max: 24 * time.Hour},
		ReasonDepleted:     {Default: 10 * time.Second, Min: 100 * time.Millisecond, Max: time.Hour},
		ReasonDisabled:     {Default: 10 * 365 * 24 * time.Hour, Min: time.Second, Max: 10 * 365 * 24 * time.Hour},
	}
}

// Hint is what a provider's answer says about when a key is usable again.
type Hint struct {
	// After is the wait the provider asked for. Meaningful only when Known.
	After time.Duration
	// Known is false when the provider gave no usable hint (absent, garbage or negative).
	Known bool
}

// rule is reason's rule: p's, else the default one.
func (p Policy) rule(reason Reason) Rule {
	if rule, ok := p[reason]; ok {
		return rule
	}
	return DefaultPolicy()[reason]
}

// Duration is the cooldown for reason given the provider's hint: the hint when known,
// else the reason's default, clamped to the reason's [min, max].
func (p Policy) Duration(reason Reason, hint Hint) time.Duration {
	rule := p.rule(reason)
	d := rule.Default
	if hint.Known && hint.After >= 0 {
		d = hint.After
	}
	return min(max(d, rule.Min), rule.Max)
}
