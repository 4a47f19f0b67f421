package config

import (
	"errors"
	"fmt"
	"regexp"
	"slices"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
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
	// FailureStatuses are the upstream statuses that mark a key and fail over, a
	// subset of 401, 403 and 429. Default [401, 403, 429].
	FailureStatuses []int `yaml:"failure_statuses"`
	// Cooldowns overrides the cooldown rule of a reason (rate_limited, unauthorized,
	// forbidden, disabled). Default: keypool.DefaultPolicy.
	Cooldowns map[string]CooldownRule `yaml:"cooldowns"`
	// Keys in priority order. At least one.
	Keys []Key `yaml:"keys"`
	// Route describes the pool's route in the generated Envoy configuration.
	Route Route `yaml:"route"`

	keys   []keypool.Key  // resolved Keys
	policy keypool.Policy // parsed Cooldowns
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
}

// validName matches the names of pools and keys: they appear in Redis keys, metric
// labels and URLs.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (p *Pool) applyDefaults() {
	setDefault(&p.BYOK, BYOKDeny)
	if p.FailureStatuses == nil {
		p.FailureStatuses = providers.DefaultFailureStatuses()
	}
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
	for i, s := range p.FailureStatuses {
		if _, ok := providers.FailureReason(s); !ok {
			add(fmt.Sprintf(".failure_statuses[%d]", i), fmt.Errorf("%d is not a key failure (want 401, 403 or 429)", s))
		}
	}
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

// FailsOver reports whether an upstream status marks the key and fails over.
func (p *Pool) FailsOver(status int) bool { return slices.Contains(p.FailureStatuses, status) }
