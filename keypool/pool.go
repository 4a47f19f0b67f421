package keypool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Pool is the set of keys of one provider account group. It is safe for concurrent
// use; its state lives in a State shared with other pools and, through Redis, with
// other replicas.
type Pool struct {
	name       string
	keys       []Key
	byRef      map[string]int32
	layout     layout
	strategy   Strategy
	rules      Policy
	failures   FailurePolicy
	headroom   HeadroomPolicy
	probeLease time.Duration
	maxModels  int
	state      State
	clock      Clock
	rand       func() uint64
	owned      ownership

	idx       atomic.Pointer[index]
	rebuildMu sync.Mutex // serialises index rebuilds; never taken by a pick on a current index

	lastFailure []atomic.Pointer[LastFailure] // per key, this replica's view
}

// PoolOptions configures NewPool.
type PoolOptions struct {
	// Name identifies the pool in state, logs and errors. Required.
	Name string
	// Keys of the pool, in the configuration's order. At least one; ids unique.
	Keys []Key
	// Strategy chooses among usable keys. Default StrategyPriority.
	Strategy Strategy
	// Weights are the keys' weights for StrategyWeighted and StrategyTiered, one per
	// key in the order of Keys, each in [1, MaxWeight]. Default: 1 each.
	Weights []int
	// Tiers are the keys' tiers for StrategyTiered, one per key in the order of
	// Keys; lower tiers are tried first. Default: 0 each (one tier).
	Tiers []int
	// Policy overrides the cooldown rules of DefaultPolicy per reason. Default: none.
	Policy Policy
	// Failures overrides the actions of DefaultFailurePolicy per class, and its
	// corroborate quorum and window. Default: none.
	Failures FailurePolicy
	// Headroom says when a successful answer's remaining limits take a scope out.
	// Default: only remaining requests at 0 do (MinTokens 0).
	Headroom HeadroomPolicy
	// ProbeLease bounds a probe: another request may probe a scope whose probe got
	// no answer within it. Default DefaultProbeLease.
	ProbeLease time.Duration
	// MaxModels bounds the models of the pool that hold state of their own at one
	// time. Past it, a model-scoped cooldown for a further model cools the key for
	// every model, as if the model were unknown. Default DefaultMaxModels.
	MaxModels int
	// State holds key state. Default: a MemoryState of the pool's own.
	State State
	// Clock tells the time. Default: the system clock.
	Clock Clock
	// Rand returns uniformly distributed random numbers for the weighted
	// strategies; it must be safe for concurrent use unless the pool is used by one
	// goroutine. Default: math/rand/v2's Uint64 (lock-free).
	Rand func() uint64
}

// DefaultProbeLease is how long one probe holds a key whose cooldown ended: an
// LLM request's response headers arrive within it unless the provider is
// struggling, and a probe lost with its replica frees the key after it.
const DefaultProbeLease = 30 * time.Second

// DefaultMaxModels is PoolOptions.MaxModels's default.
const DefaultMaxModels = 64

// NewPool returns the pool opts describe, or an error naming what is wrong with them.
func NewPool(opts PoolOptions) (*Pool, error) {
	var errs []error
	if opts.Name == "" {
		errs = append(errs, errors.New("pool name is empty"))
	}
	if len(opts.Keys) == 0 {
		errs = append(errs, fmt.Errorf("pool %q has no keys", opts.Name))
	}
	byRef := make(map[string]int32, len(opts.Keys))
	seen := make(map[string]bool, len(opts.Keys))
	for i, k := range opts.Keys {
		if k.id == "" {
			errs = append(errs, fmt.Errorf("pool %q: key %d has no id", opts.Name, i))
		}
		if seen[k.id] {
			errs = append(errs, fmt.Errorf("pool %q: duplicate key id %q", opts.Name, k.id))
		}
		seen[k.id] = true
		byRef[k.ref] = int32(i)
	}
	strategy := opts.Strategy
	if strategy == "" {
		strategy = StrategyPriority
	}
	lay, err := newLayout(strategy, len(opts.Keys), opts.Weights, opts.Tiers)
	if err != nil {
		errs = append(errs, fmt.Errorf("pool %q: strategy %s: %w", opts.Name, strategy, err))
	}
	rules := DefaultPolicy()
	for r, rule := range opts.Policy {
		if err := rule.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("pool %q: cooldown %s: %w", opts.Name, r, err))
		}
		rules[r] = rule
	}
	if err := opts.Failures.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("pool %q: failure policy: %w", opts.Name, err))
	}
	if opts.Headroom.MinTokens < 0 {
		errs = append(errs, fmt.Errorf("pool %q: headroom token floor %d is negative", opts.Name, opts.Headroom.MinTokens))
	}
	if opts.ProbeLease < 0 || opts.MaxModels < 0 {
		errs = append(errs, fmt.Errorf("pool %q: probe lease and max models must not be negative", opts.Name))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	p := &Pool{
		name:        opts.Name,
		keys:        opts.Keys,
		byRef:       byRef,
		layout:      lay,
		strategy:    strategy,
		rules:       rules,
		failures:    opts.Failures.withDefaults(),
		headroom:    opts.Headroom,
		probeLease:  opts.ProbeLease,
		maxModels:   opts.MaxModels,
		state:       opts.State,
		clock:       opts.Clock,
		rand:        opts.Rand,
		owned:       newOwnership(opts.Keys),
		lastFailure: make([]atomic.Pointer[LastFailure], len(opts.Keys)),
	}
	if p.probeLease == 0 {
		p.probeLease = DefaultProbeLease
	}
	if p.maxModels == 0 {
		p.maxModels = DefaultMaxModels
	}
	if p.state == nil {
		p.state = NewMemoryState(opts.Clock, 0)
	}
	if p.rand == nil {
		p.rand = rand.Uint64
	}
	return p, nil
}

// Name is the pool's name.
func (p *Pool) Name() string { return p.name }

// Size is the number of keys in the pool.
func (p *Pool) Size() int { return len(p.keys) }

// Strategy is the pool's selection strategy.
func (p *Pool) Strategy() Strategy { return p.strategy }

// Now is the pool's clock reading.
func (p *Pool) Now() time.Time { return now(p.clock) }

// Attempt identifies one upstream attempt of a request.
type Attempt struct {
	// RequestID is the same on every attempt of one request (Envoy's x-request-id).
	// Empty when unknown: then attempts cannot be correlated, only cooldowns steer
	// the walk, and a failure that cools nothing cannot fail over.
	RequestID string
	// Number counts attempts from 1 (Envoy's x-envoy-attempt-count). Zero when
	// unknown, which is treated as a possible retry.
	Number int
	// Model is the model the request asks for, as the client named it; "" when
	// unknown (then every cooldown is key-wide). The pool bounds it (ModelName).
	Model string
}

// first reports whether the attempt is known to be the request's first: nothing can
// have been tried, so the local view decides without I/O.
func (a Attempt) first() bool { return a.Number == 1 || a.RequestID == "" }

// Pick is the key chosen for one attempt. Give it back to Fail, Finish or Release.
type Pick struct {
	// Key is the key to inject; its methods (ID, Hint, Value) are the Pick's.
	Key

	index   int32
	model   string // bounded
	holder  string // the probe lease holder; "" when no lease is held
	probes  uint8  // flagProbeKey, flagProbeModel: the scopes whose leases are held
	steered bool
}

// Steered reports whether headroom steering changed this pick: a key the
// strategy would have tried first (in priority order, or in the same or an earlier
// tier) is out because a successful answer said its limit was spent. It is what the
// metric "picks steered by headroom" counts.
func (pk Pick) Steered() bool { return pk.steered }

// Probing reports whether the attempt probes the key: its cooldown (key-wide or for
// the model) just ended, and this attempt's answer decides whether it returns.
func (pk Pick) Probing() bool { return pk.probes != 0 }

// Model is the bounded model name the pick was made for ("" key-wide).
func (pk Pick) Model() string { return pk.model }

// Pick returns the key for an attempt, chosen by the pool's strategy among the keys
// that no cooldown holds back for the attempt's model and that the request has not
// tried. A key whose cooldown just ended serves one request at a time (a probe).
//
// A healthy first attempt reads only the replica's local view: no I/O, no lock, no
// allocation, and a cost independent of the pool's size. A retry also reads the
// request's tried set (one round trip with Redis). When no key is left the error is
// an *ExhaustedError, and the request's tried set is forgotten (the exhaustion
// answer ends it).
func (p *Pool) Pick(ctx context.Context, a Attempt) (Pick, error) {
	t := now(p.clock)
	model := ModelName(a.Model)
	// The keys this attempt may not take: those its request tried, and those it
	// lost to another request's probe. A handful at most.
	var inline [8]int32
	excluded := inline[:0]
	if !a.first() {
		for _, ref := range p.state.Tried(ctx, p.name, a.RequestID) {
			if i, ok := p.byRef[ref]; ok {
				excluded = exclude(excluded, i)
			}
		}
	}
	// A retry leaves probes to first attempts while another key can serve it: it
	// has read its tried set already, and a probe would be a second round trip in
	// the same ext_proc message.
	var deferInline [4]int32
	deferred := deferInline[:0]
	for {
		sel := p.currentIndex(t).selector(model)
		k, ok := sel.choose(p, append(excluded, deferred...))
		if !ok && len(deferred) > 0 {
			deferred = nil // only keys to probe are left: probe one
			continue
		}
		if !ok {
			err := sel.exhausted(p, t, model)
			if !a.first() {
				p.state.Forget(ctx, p.name, a.RequestID)
			}
			return Pick{}, err
		}
		pk := Pick{Key: p.keys[k], index: k, model: model, steered: p.layout.tierOf[k] >= sel.depletedTier}
		switch {
		case sel.flags[k]&probeFlags == 0:
			return pk, nil
		case !a.first() && deferred != nil:
			deferred = exclude(deferred, k)
		case p.acquireProbes(ctx, &pk, sel.flags[k]):
			return pk, nil
		default:
			excluded = exclude(excluded, k) // another request probes it
		}
	}
}

// selector is the selector for model ("" key-wide).
func (ix *index) selector(model string) *selector {
	if model != "" {
		if s, ok := ix.models[model]; ok {
			return s
		}
	}
	return ix.base
}

// currentIndex returns the pick index for the State's current view at t,
// rebuilding it when the view changed or a scope changed phase.
func (p *Pool) currentIndex(t time.Time) *index {
	tn := t.UnixNano()
	if ix := p.idx.Load(); ix != nil && ix.view == p.state.View(p.name) && ix.freshAt(tn) {
		return ix
	}
	p.rebuildMu.Lock()
	defer p.rebuildMu.Unlock()
	v := p.state.View(p.name)
	if ix := p.idx.Load(); ix != nil && ix.view == v && ix.freshAt(tn) {
		return ix
	}
	ix := p.buildIndex(v, t)
	p.idx.Store(ix)
	return ix
}

// acquireProbes takes the probe leases flags asks for. It reports false, holding
// nothing, when another request probes one of the scopes or it cools again.
func (p *Pool) acquireProbes(ctx context.Context, pk *Pick, flags uint8) bool {
	pk.holder = p.newHolder()
	for _, f := range [...]uint8{flagProbeKey, flagProbeModel} {
		if flags&f == 0 {
			continue
		}
		grant, _ := p.state.AcquireProbe(ctx, p.name, pk.scopeOf(f), Lease{Holder: pk.holder, TTL: p.probeLease})
		switch grant {
		case ProbeGranted:
			pk.probes |= f
		case ProbeNotNeeded:
		default:
			p.endProbes(ctx, pk, ProbeReleased)
			return false
		}
	}
	if pk.probes == 0 {
		pk.holder = ""
	}
	return true
}

// scopeOf is the scope of the key that a probe flag names.
func (pk Pick) scopeOf(flag uint8) Scope {
	if flag == flagProbeModel {
		return Scope{Ref: pk.Key.ref, Model: pk.model}
	}
	return Scope{Ref: pk.Key.ref}
}

// endProbes ends every lease pk holds.
func (p *Pool) endProbes(ctx context.Context, pk *Pick, end ProbeEnd) {
	for _, f := range [...]uint8{flagProbeKey, flagProbeModel} {
		if pk.probes&f != 0 {
			p.state.EndProbe(ctx, p.name, pk.scopeOf(f), pk.holder, end)
		}
	}
	pk.probes, pk.holder = 0, ""
}

func (p *Pool) newHolder() string {
	const digits = "0123456789abcdefghijklmnopqrstuv"
	var b [13]byte
	r := p.rand()
	for i := range b {
		b[i] = digits[r&31]
		r >>= 5
	}
	return string(b[:])
}

// exclude adds k to the excluded keys, once.
func exclude(excluded []int32, k int32) []int32 {
	for _, x := range excluded {
		if x == k {
			return excluded
		}
	}
	return append(excluded, k)
}

// ErrUnknownKey is returned for a key id that is not in the pool.
var ErrUnknownKey = errors.New("unknown key")

func (p *Pool) key(id string) (Key, error) {
	for _, k := range p.keys {
		if k.id == id {
			return k, nil
		}
	}
	return Key{}, fmt.Errorf("pool %q: %w %q", p.name, ErrUnknownKey, id)
}

// Disable takes the key out of rotation for d (the disabled rule's default when d is
// zero) on every replica sharing the state, whatever its state was. The error wraps
// ErrPending when the action applies here but has not reached the shared state yet.
func (p *Pool) Disable(ctx context.Context, keyID string, d time.Duration) (Cooldown, error) {
	k, err := p.key(keyID)
	if err != nil {
		return Cooldown{}, err
	}
	if d <= 0 {
		d = p.rules[ReasonDisabled].Default
	}
	c := Cooldown{Until: now(p.clock).Add(d), Reason: ReasonDisabled}
	return c, p.state.Override(ctx, p.name, k.ref, c)
}

// Enable returns the key to rotation now, for every model, whatever its state was.
// The error wraps ErrPending when the action applies here but has not reached the
// shared state yet.
func (p *Pool) Enable(ctx context.Context, keyID string) error {
	k, err := p.key(keyID)
	if err != nil {
		return err
	}
	return p.state.Override(ctx, p.name, k.ref, Cooldown{})
}
