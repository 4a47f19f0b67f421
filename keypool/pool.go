package keypool

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Pool is the set of keys of one provider account group, walked in priority order.
// It is safe for concurrent use; its state lives in a State shared with other pools
// and, through Redis, with other replicas.
type Pool struct {
	name   string
	keys   []Key
	refs   []string
	policy Policy
	state  State
	clock  Clock
}

// PoolOptions configures NewPool.
type PoolOptions struct {
	// Name identifies the pool in state, logs and errors. Required.
	Name string
	// Keys in priority order: the first usable one serves. At least one; ids unique.
	Keys []Key
	// Policy overrides the cooldown rules of DefaultPolicy per reason. Default: none.
	Policy Policy
	// State holds key state. Default: a MemoryState of the pool's own.
	State State
	// Clock tells the time. Default: the system clock.
	Clock Clock
}

// NewPool returns the pool opts describe, or an error naming what is wrong with them.
func NewPool(opts PoolOptions) (*Pool, error) {
	var errs []error
	if opts.Name == "" {
		errs = append(errs, errors.New("pool name is empty"))
	}
	if len(opts.Keys) == 0 {
		errs = append(errs, fmt.Errorf("pool %q has no keys", opts.Name))
	}
	seen := make(map[string]bool, len(opts.Keys))
	refs := make([]string, len(opts.Keys))
	for i, k := range opts.Keys {
		if k.id == "" {
			errs = append(errs, fmt.Errorf("pool %q: key %d has no id", opts.Name, i))
		}
		if seen[k.id] {
			errs = append(errs, fmt.Errorf("pool %q: duplicate key id %q", opts.Name, k.id))
		}
		seen[k.id] = true
		refs[i] = k.ref
	}
	policy := DefaultPolicy()
	for r, rule := range opts.Policy {
		if err := rule.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("pool %q: cooldown %s: %w", opts.Name, r, err))
		}
		policy[r] = rule
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	state := opts.State
	if state == nil {
		state = NewMemoryState(opts.Clock, 0)
	}
	return &Pool{
		name:   opts.Name,
		keys:   opts.Keys,
		refs:   refs,
		policy: policy,
		state:  state,
		clock:  opts.Clock,
	}, nil
}

// Name is the pool's name.
func (p *Pool) Name() string { return p.name }

// Size is the number of keys in the pool.
func (p *Pool) Size() int { return len(p.keys) }

// Attempt identifies one upstream attempt of a request.
type Attempt struct {
	// RequestID is the same on every attempt of one request (Envoy's x-request-id).
	// Empty when unknown: then attempts cannot be correlated and only cooldowns steer
	// the walk.
	RequestID string
	// Number counts attempts from 1 (Envoy's x-envoy-attempt-count). Zero when unknown,
	// which is treated as a possible retry.
	Number int
}

// first reports whether the attempt is known to be the request's first: nothing can
// have been tried, so the local view decides without I/O.
func (a Attempt) first() bool { return a.Number == 1 || a.RequestID == "" }

// Pick returns the key for an attempt: the first key in priority order that is not
// cooling down and that the request has not tried. The first attempt of a request
// reads only the replica's local view; a retry reads the authoritative state. When no
// key is left, the error is an *ExhaustedError.
func (p *Pool) Pick(ctx context.Context, a Attempt) (Key, error) {
	t := now(p.clock)
	if a.first() {
		return walk(p.name, p.keys, t, func(ref string) Cooldown { return p.state.Cooldown(p.name, ref) }, nil)
	}
	view := p.state.RequestView(ctx, p.name, p.refs, a.RequestID)
	return walk(p.name, p.keys, t, func(ref string) Cooldown { return view.Cooldowns[ref] }, view.Tried)
}

// Fail records that the provider refused key for reason during attempt a, with the
// provider's hint on when to come back. It returns the cooldown now in force, which
// may be longer than the one this failure asked for.
func (p *Pool) Fail(ctx context.Context, a Attempt, key Key, reason Reason, hint Hint) Cooldown {
	c := p.policy.CooldownAt(now(p.clock), reason, hint)
	return p.state.MarkFailed(ctx, p.name, key.ref, a.RequestID, c)
}

// ErrUnknownKey is returned for a key id that is not in the pool.
var ErrUnknownKey = errors.New("unknown key")

// Disable takes the key out of rotation for d (the disabled rule's default when d is
// zero), on every replica sharing the state.
func (p *Pool) Disable(ctx context.Context, keyID string, d time.Duration) (Cooldown, error) {
	k, err := p.key(keyID)
	if err != nil {
		return Cooldown{}, err
	}
	if d <= 0 {
		d = p.policy[ReasonDisabled].Default
	}
	c := Cooldown{Until: now(p.clock).Add(d), Reason: ReasonDisabled}
	return c, p.state.Override(ctx, p.name, k.ref, c)
}

// Enable returns the key to rotation now, whatever its state was.
func (p *Pool) Enable(ctx context.Context, keyID string) error {
	k, err := p.key(keyID)
	if err != nil {
		return err
	}
	return p.state.Override(ctx, p.name, k.ref, Cooldown{})
}

func (p *Pool) key(id string) (Key, error) {
	for _, k := range p.keys {
		if k.id == id {
			return k, nil
		}
	}
	return Key{}, fmt.Errorf("pool %q: %w %q", p.name, ErrUnknownKey, id)
}

// KeyStatus is what an operator sees of one key.
type KeyStatus struct {
	Key Key
	// Cooldown is the key's state in this replica's view; zero when available.
	Cooldown Cooldown
}

// Available reports whether the key may serve at t.
func (s KeyStatus) Available(t time.Time) bool { return !s.Cooldown.ActiveAt(t) }

// Status lists the pool's keys in priority order with their state in this replica's
// local view. Cooldowns that already ended read as zero.
func (p *Pool) Status() []KeyStatus {
	t := now(p.clock)
	out := make([]KeyStatus, len(p.keys))
	for i, k := range p.keys {
		out[i] = KeyStatus{Key: k}
		if c := p.state.Cooldown(p.name, k.ref); c.ActiveAt(t) {
			out[i].Cooldown = c
		}
	}
	return out
}

// Now is the pool's clock reading.
func (p *Pool) Now() time.Time { return now(p.clock) }
