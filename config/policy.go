package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// Corroborate configures the corroborate action: how many distinct requests must
// see a failure class on a key (or a key and model) within the window before the
// key cools for everyone.
type Corroborate struct {
	// Requests is the quorum. Default 3.
	Requests int `yaml:"requests"`
	// Window is how recent the agreeing requests must be. Default 10s.
	Window Duration `yaml:"window"`
}

// Headroom configures steering away from a key before it answers 429.
type Headroom struct {
	// MinTokens is the token floor: a key whose remaining tokens (as a successful
	// answer reports them) fall below it is taken out until the tokens reset. 0
	// turns token steering off (remaining requests at 0 still steer). Default 1:
	// steer when no token is left.
	MinTokens *int64 `yaml:"min_tokens"`
}

// maxProbeLease bounds probe_lease: a lost probe blocks its key for this long.
const maxProbeLease = 10 * time.Minute

// DefaultModelHeader is Pool.ModelHeader's default.
const DefaultModelHeader = "x-keypool-model"

func (p *Pool) applyPolicyDefaults() {
	setDefault(&p.Strategy, string(keypool.StrategyPriority))
	setDefault(&p.ModelHeader, DefaultModelHeader)
	setDefault(&p.Corroborate.Requests, keypool.DefaultQuorum)
	setDefault(&p.Corroborate.Window, Duration(keypool.DefaultWindow))
	setDefault(&p.ProbeLease, Duration(keypool.DefaultProbeLease))
	if p.Headroom.MinTokens == nil {
		v := int64(keypool.DefaultMinTokens)
		p.Headroom.MinTokens = &v
	}
}

// validatePolicy checks the failure policy, strategy and key weights and tiers, and
// keeps what the pool's keypool options need.
func (p *Pool) validatePolicy(path string) []error {
	var errs []error
	add := func(field string, err error) { errs = append(errs, fieldError(path+field, err)) }

	if p.FailureStatuses != nil {
		add(".failure_statuses", errors.New("removed: which failures cool a key, fail a request over or pass "+
			"is now decided per failure class by failure_policy (see the README's Key-state rules). A status "+
			"left out of the old list maps to pass for its classes: 401 → unauthorized; 403 → forbidden; "+
			"429 → rate_limited, rate_limit_unconfirmed, quota, request_too_large; "+
			"e.g. failure_policy: {forbidden: pass}"))
	}
	p.failures = keypool.FailurePolicy{Actions: map[keypool.Class]keypool.Action{}}
	for name, action := range p.FailurePolicy {
		class, err := keypool.ParseClass(name)
		if err != nil {
			add(".failure_policy."+name, err)
			continue
		}
		a, err := keypool.ParseAction(action)
		if err != nil {
			add(".failure_policy."+name, err)
			continue
		}
		p.failures.Actions[class] = a
	}
	if p.Corroborate.Requests < 1 {
		add(".corroborate.requests", fmt.Errorf("%d is less than 1", p.Corroborate.Requests))
	}
	if p.Corroborate.Window.Std() <= 0 {
		add(".corroborate.window", fmt.Errorf("%s is not positive", p.Corroborate.Window.Std()))
	}
	p.failures.Quorum, p.failures.Window = p.Corroborate.Requests, p.Corroborate.Window.Std()
	if lease := p.ProbeLease.Std(); lease <= 0 || lease > maxProbeLease {
		add(".probe_lease", fmt.Errorf("%s is outside (0, %s]", lease, maxProbeLease))
	}
	if p.Headroom.MinTokens != nil && *p.Headroom.MinTokens < 0 {
		add(".headroom.min_tokens", fmt.Errorf("%d is negative", *p.Headroom.MinTokens))
	}

	if err := checkModelHeader(p.ModelHeader); err != nil {
		add(".model_header", err)
	}

	strategy, err := keypool.ParseStrategy(p.Strategy)
	if err != nil {
		add(".strategy", err)
	}
	p.weights, p.tiers = nil, nil
	weighted := strategy == keypool.StrategyWeighted || strategy == keypool.StrategyTiered
	for i, k := range p.Keys {
		kp := fmt.Sprintf(".keys[%d]", i)
		switch {
		case k.Weight != 0 && !weighted:
			add(kp+".weight", fmt.Errorf("applies only with strategy weighted or tiered (the pool's is %s)", p.Strategy))
		case k.Weight < 0 || k.Weight > keypool.MaxWeight:
			add(kp+".weight", fmt.Errorf("%d is outside [1, %d]", k.Weight, keypool.MaxWeight))
		}
		switch {
		case k.Tier != 0 && strategy != keypool.StrategyTiered:
			add(kp+".tier", fmt.Errorf("applies only with strategy tiered (the pool's is %s)", p.Strategy))
		case k.Tier < 0:
			add(kp+".tier", fmt.Errorf("%d is negative", k.Tier))
		}
	}
	if weighted {
		p.weights = make([]int, len(p.Keys))
		for i, k := range p.Keys {
			p.weights[i] = max(k.Weight, 1)
		}
	}
	if strategy == keypool.StrategyTiered {
		p.tiers = make([]int, len(p.Keys))
		for i, k := range p.Keys {
			p.tiers[i] = k.Tier
		}
	}
	return errs
}

// checkModelHeader accepts a lower-case HTTP header name that carries no
// credential and that Envoy lets an ext_proc server remove.
func checkModelHeader(name string) error {
	if name == "" {
		return errors.New("empty")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("%q is not a lower-case header name (letters, digits, '-', '_', '.')", name)
		}
	}
	switch {
	case slices.Contains(providers.CredentialHeaders(), name):
		return fmt.Errorf("%q carries credentials", name)
	case name == "host" || strings.HasPrefix(name, "x-envoy-"):
		return fmt.Errorf("%q is a header Envoy does not let an ext_proc server remove", name)
	}
	return nil
}

// PoolOptions is what keypool.NewPool needs for this pool, with its state. Call
// it on a configuration that Read returned (its keys resolved).
func (p *Pool) PoolOptions(state keypool.State) keypool.PoolOptions {
	var minTokens int64
	if p.Headroom.MinTokens != nil {
		minTokens = *p.Headroom.MinTokens
	}
	return keypool.PoolOptions{
		Name:       p.Name,
		Keys:       p.ResolvedKeys(),
		Strategy:   keypool.Strategy(p.Strategy),
		Weights:    slices.Clone(p.weights),
		Tiers:      slices.Clone(p.tiers),
		Policy:     p.policy,
		Failures:   p.failures,
		Headroom:   keypool.HeadroomPolicy{MinTokens: minTokens},
		ProbeLease: p.ProbeLease.Std(),
		State:      state,
	}
}

// Failures is the pool's failure policy as the file sets it; keypool fills in the
// defaults (keypool.DefaultActions) for the classes it leaves out.
func (p *Pool) Failures() keypool.FailurePolicy { return p.failures }
