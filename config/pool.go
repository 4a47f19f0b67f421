package config

import (
	"errors"
	"fmt"
	"regexp"
	"slices"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// Pool is one pool of keys for one provider.
type Pool struct {
	// Name is how the Envoy filter names the pool (gRPC initial metadata). Required;
	// letters, digits, '.', '_' and '-'.
	Name string `yaml:"name"`
	// Provider is the API the keys belong to: openai, anthropic, azure-openai, gemini
	// or openai-compatible. Required.
	Provider string `yaml:"provider"`
	// ProviderSettings holds the azure and openai_compatible blocks (config/provider.go).
	ProviderSettings `yaml:",inline"`
	// BYOK is the bring-your-own-key policy: deny (strip client credentials and inject
	// a pool key) or allow (a request with a client credential passes untouched).
	// Default deny.
	BYOK string `yaml:"byok"`
	// Strategy chooses among the usable keys: priority (the first usable key in
	// the order of Keys serves, which keeps provider prompt caches warm), weighted
	// (spread by the keys' weight) or tiered (the lowest tier with a usable key
	// serves, spread by weight inside the tier). Default priority.
	Strategy string `yaml:"strategy"`
	// FailurePolicy overrides the action of a failure class (rate_limited,
	// rate_limit_unconfirmed, quota, unauthorized, forbidden, request_too_large,
	// overloaded): cool, failover, corroborate or pass. Default:
	// keypool.DefaultActions.
	FailurePolicy map[string]string `yaml:"failure_policy"`
	// Corroborate sets the quorum and window of the corroborate action. Default 3
	// requests within 10s.
	Corroborate Corroborate `yaml:"corroborate"`
	// Headroom sets when a successful answer's remaining limits take a key out.
	Headroom Headroom `yaml:"headroom"`
	// ModelHeader is the request header extproc reads the request's model from
	// when the provider's path names none (Envoy AI Gateway sets x-ai-eg-model);
	// it is removed before the request goes upstream. Lower case. Default
	// "x-keypool-model".
	ModelHeader string `yaml:"model_header"`
	// ProbeLease is how long one probe of a key whose cooldown ended may take
	// before another request may probe it. Default 30s, at most 10m.
	ProbeLease Duration `yaml:"probe_lease"`
	// FailureStatuses was the list of statuses that marked a key. Removed: setting
	// it is an error that points to FailurePolicy.
	FailureStatuses []int `yaml:"failure_statuses"`
	// Cooldowns overrides the cooldown rule of a reason (rate_limited, unauthorized,
	// forbidden, quota, depleted, disabled). Default: keypool.DefaultPolicy.
	Cooldowns map[string]CooldownRule `yaml:"cooldowns"`
	// Keys in priority order. At least one.
	Keys []Key `yaml:"keys"`
	// Route describes the pool's route in the generated Envoy configuration.
	Route Route `yaml:"route"`

	keys     []keypool.Key         // resolved Keys
	policy   keypool.Policy        // parsed Cooldowns
	failures keypool.FailurePolicy // parsed FailurePolicy and Corroborate
	weights  []int                 // per key, for the weighted strategies
	tiers    []int                 // per key, for the tiered strategy
}

// The BYOK policies.
const (
	BYOKDeny  = "deny"
	BYOKAllow = "allow"
)

// CooldownRule overrides a reason's cooldown bounds; zero fields keep the default.
type CooldownRule struct {
	Default Duration `yaml:"default"`
	Min     Duration `yaml:"min"`
	Max     Duration `yaml:"max"`
}

// Key is one key of a pool.
type Key struct {
	// ID names the key in logs, metrics, state and the admin API. Required, unique in
	// the pool.
	ID string `yaml:"id"`
	// Secret says where the key's value is read from. Required.
	Secret SecretRef `yaml:"secret"`
	// Weight is the key's share of the requests with strategy weighted or tiered
	// (inside its tier), from 1 to 1000000. Default 1.
	Weight int `yaml:"weight"`
	// Tier is the key's tier with strategy tiered: lower tiers serve first.
	// Default 0.
	Tier int `yaml:"tier"`
}

// validName matches the names of pools and keys: they appear in Redis keys, metric
// labels and URLs.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (p *Pool) applyDefaults() {
	setDefault(&p.BYOK, BYOKDeny)
	p.applyPolicyDefaults()
	p.Route.applyDefaults(p)
}

func (p *Pool) validate(path string) []error {
	var errs []error
	add := func(field string, err error) { errs = append(errs, fieldError(path+field, err)) }
	if !validName.MatchString(p.Name) {
		add(".name", fmt.Errorf("%q is not a valid name (letters, digits, '.', '_', '-'; at most 63)", p.Name))
	}
	errs = append(errs, p.validateProvider(path)...)
	if p.BYOK != BYOKDeny && p.BYOK != BYOKAllow {
		add(".byok", fmt.Errorf("%q is not one of deny, allow", p.BYOK))
	}
	errs = append(errs, p.validatePolicy(path)...)
	p.policy = keypool.DefaultPolicy()
	for name, r := range p.Cooldowns {
		reason, err := keypool.ParseReason(name)
		if err != nil {
			add(".cooldowns."+name, err)
			continue
		}
		rule := p.policy[reason]
		if r.Default != 0 {
			rule.Default = r.Default.Std()
		}
		if r.Min != 0 {
			rule.Min = r.Min.Std()
		}
		if r.Max != 0 {
			rule.Max = r.Max.Std()
		}
		if err := rule.Validate(); err != nil {
			add(".cooldowns."+name, err)
		}
		p.policy[reason] = rule
	}
	if len(p.Keys) == 0 {
		add(".keys", errors.New("pool has no keys"))
	}
	ids := map[string]int{}
	for i, k := range p.Keys {
		kp := fmt.Sprintf(".keys[%d]", i)
		if !validName.MatchString(k.ID) {
			add(kp+".id", fmt.Errorf("%q is not a valid key id (letters, digits, '.', '_', '-'; at most 63)", k.ID))
		} else if j, dup := ids[k.ID]; dup {
			add(kp+".id", fmt.Errorf("duplicate key id %q (also keys[%d])", k.ID, j))
		}
		ids[k.ID] = i
		if k.Secret == "" {
			add(kp+".secret", errors.New("missing"))
		} else if err := k.Secret.Check(); err != nil {
			add(kp+".secret", err)
		}
	}
	errs = append(errs, p.Route.validate(path+".route")...)
	return errs
}

func (p *Pool) resolveSecrets(path string, env Environ) []error {
	var errs []error
	p.keys = make([]keypool.Key, 0, len(p.Keys))
	for i, k := range p.Keys {
		if k.Secret.Check() != nil {
			continue // reported by validate
		}
		v, err := k.Secret.Resolve(env)
		if err != nil {
			errs = append(errs, fieldError(fmt.Sprintf("%s.keys[%d].secret", path, i), err))
			continue
		}
		p.keys = append(p.keys, keypool.NewKey(p.Name, k.ID, v))
	}
	return errs
}

// ResolvedKeys are the pool's keys with their values, in priority order.
func (p *Pool) ResolvedKeys() []keypool.Key { return slices.Clone(p.keys) }

// Policy is the pool's cooldown rules: the defaults with the file's overrides.
func (p *Pool) Policy() keypool.Policy { return p.policy }

// FailsOver reports whether an upstream status may be a key failure (401, 403,
// 429); the pool's failure policy decides what the failure does.
//
// Deprecated: extproc classifies answers with providers.Provider.Classify and
// keypool's failure policy; this stays until extproc.Target.FailsOver is gone.
func (p *Pool) FailsOver(status int) bool {
	return status == 401 || status == 403 || status == 429
}
