package redisstate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// State is a keypool.State shared through Redis. It is safe for concurrent use.
// Build it with New and stop it with Close.
type State struct {
	client      redis.UniversalClient
	ownsClient  bool
	keys        layout
	scripts     scriptSet
	timeout     time.Duration
	requestTTL  time.Duration
	healthEvery time.Duration
	clock       keypool.Clock
	hooks       testHooks

	view    *view
	health  *health
	metrics *metrics

	// resyncWanted asks the subscriber for a full resync: set when a reply or a
	// notification comes from an epoch the view does not know.
	resyncWanted atomic.Bool
	closed       atomic.Bool

	cancel    context.CancelFunc
	done      chan struct{} // closed when the subscriber has returned
	firstSync chan struct{} // closed after the subscriber's first attempt
	closeOnce sync.Once

	psMu sync.Mutex // protects ps
	ps   *redis.PubSub

	shim v2shim // temporary keypool.State v2 bridge (v2shim.go)
}

var _ keypool.State = (*State)(nil)

// New connects to the Redis opts describe and starts the subscriber that keeps
// this replica's local view fresh. It waits until the first synchronisation with
// Redis succeeded or failed, or ctx is done. It fails only on invalid options: an
// unreachable Redis gives a State that serves from its local view, reports itself
// degraded (Ready) and keeps reconnecting.
func New(ctx context.Context, opts Options) (*State, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("redisstate: %w", err)
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	client, owns := o.Client, false
	if client == nil {
		if client, err = o.newClient(); err != nil {
			return nil, fmt.Errorf("redisstate: %w", err)
		}
		owns = true
	}
	s := &State{
		client:      client,
		ownsClient:  owns,
		keys:        layout{prefix: o.Prefix},
		scripts:     newScriptSet(),
		timeout:     o.Timeout,
		requestTTL:  o.RequestTTL,
		healthEvery: o.HealthCheckInterval,
		clock:       o.Clock,
		view:        newView(o.RequestTTL),
		health:      &health{log: o.Logger.Named("redisstate"), metrics: m},
		metrics:     m,
		done:        make(chan struct{}),
		firstSync:   make(chan struct{}),
	}
	if o.testHooks != nil {
		s.hooks = *o.testHooks
		for _, h := range o.testHooks.redisHooks {
			client.AddHook(h)
		}
	}
	m.up.Set(0)
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(runCtx)
	select {
	case <-s.firstSync:
	case <-ctx.Done():
	}
	return s, nil
}

// Close stops the subscriber and waits for it, and closes the client New built.
// The State then answers from its local view only. Close is idempotent.
func (s *State) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.psMu.Lock()
		if s.ps != nil {
			_ = s.ps.Close() // unblocks a pending receive
		}
		s.psMu.Unlock()
		<-s.done
		if s.ownsClient {
			err = s.client.Close()
		}
	})
	return err
}

// Ready is nil while this replica reaches Redis with a synchronised view, else an
// error wrapping ErrUnavailable: the replica still serves, from its local view,
// but is degraded. Made for a readiness endpoint.
func (s *State) Ready() error { return s.health.ready() }

// Healthy reports whether Ready is nil.
func (s *State) Healthy() bool { return s.health.up() }

// Cooldown implements keypool.State from the local view: no I/O, no allocation.
func (s *State) Cooldown(pool, ref string) keypool.Cooldown {
	return s.view.cooldown(pool, ref)
}

// RequestView implements keypool.State with one round trip: the cooldowns of refs
// and the request's tried keys, read from Redis and merged into the local view.
// While Redis is unreachable it answers from the local view and the keys this
// replica saw the request try.
func (s *State) RequestView(ctx context.Context, pool string, refs []string, requestID string) keypool.RequestView {
	now := s.now()
	var (
		values  *redis.SliceCmd
		members *redis.StringSliceCmd
		meta    *redis.SliceCmd
	)
	err := s.call(ctx, "request_view", false, func(ctx context.Context) error {
		keys := make([]string, len(refs))
		for i, ref := range refs {
			keys[i] = s.keys.cooldown(pool, ref)
		}
		_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			if len(keys) > 0 {
				values = p.MGet(ctx, keys...)
			}
			if requestID != "" {
				members = p.SMembers(ctx, s.keys.tried(pool, requestID))
			}
			meta = p.HMGet(ctx, s.keys.meta(pool), "epoch", "seq")
			return nil
		})
		return err
	})
	if err != nil {
		return s.view.localRequestView(pool, refs, requestID, now)
	}

	epoch, seq := parseMeta(meta.Val())
	var tried []string
	if members != nil {
		tried = members.Val()
	}
	v := s.view
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.publishLocked()
	pv := v.poolLocked(pool)
	same := pv.sameEpoch(epoch)
	if !same {
		// Redis lost the pool's state since the last resync (or it has not run):
		// keep the union until the subscriber rebuilds the pool.
		s.resyncWanted.Store(true)
	}
	if values != nil {
		for i, raw := range values.Val() {
			str, _ := raw.(string)
			if st, ok := parseStored(str); ok {
				v.applyLocked(pool, refs[i], st, epoch)
			} else if same {
				v.forgetLocked(pool, refs[i], seq)
			}
		}
	}
	return v.requestViewLocked(pool, refs, requestID, tried, now)
}

// MarkFailed implements keypool.State with one round trip: a script that keeps
// the later deadline, records the request's tried key and publishes the change.
// While Redis is unreachable the mark is kept locally and pushed to Redis when it
// returns.
func (s *State) MarkFailed(ctx context.Context, pool, ref, requestID string, c keypool.Cooldown) keypool.Cooldown {
	now := s.now()
	s.view.recordTried(pool, ref, requestID, now)
	// The failure happened whether or not the request is still there: the mark
	// must reach the other replicas even if Envoy cancelled the stream. It is
	// still bounded by the State's timeout.
	ctx = context.WithoutCancel(ctx)
	var reply []any
	err := s.call(ctx, "mark", false, func(ctx context.Context) error {
		keys := []string{s.keys.meta(pool), s.keys.cooldown(pool, ref), s.keys.index(pool)}
		if requestID != "" {
			keys = append(keys, s.keys.tried(pool, requestID))
		}
		var err error
		reply, err = s.scripts.mark.Run(ctx, s.client, keys,
			unixMillisCeil(c.Until), string(c.Reason), now.UnixMilli(), s.requestTTL.Milliseconds(),
			s.keys.channel(), pool, ref, newEpoch()).Slice()
		return err
	})
	var st stored
	var epoch string
	if err == nil {
		var ok bool
		if st, epoch, ok = parseReply(reply); !ok {
			err = fmt.Errorf("redisstate: unexpected mark reply %v", reply)
			s.health.failed(ctx, "mark", err)
		}
	}
	if err != nil {
		return s.view.markLocal(pool, ref, c)
	}
	v := s.view
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.publishLocked()
	if st.seq > 0 && !v.applyLocked(pool, ref, st, epoch) {
		s.resyncWanted.Store(true)
	}
	return v.poolLocked(pool).entries[ref].c
}

// Override implements keypool.State: it replaces the key's state in Redis (a
// zero Cooldown makes it available) and tells every replica. It tries Redis even
// while the replica is degraded, and returns an error wrapping ErrUnavailable when
// Redis could not take it; the local view is then left unchanged, so that no
// replica disagrees with the others about an operator's action.
func (s *State) Override(ctx context.Context, pool, ref string, c keypool.Cooldown) error {
	now := s.now()
	var reply []any
	err := s.call(ctx, "override", true, func(ctx context.Context) error {
		var err error
		reply, err = s.scripts.override.Run(ctx, s.client,
			[]string{s.keys.meta(pool), s.keys.cooldown(pool, ref), s.keys.index(pool)},
			unixMillisCeil(c.Until), string(c.Reason), now.UnixMilli(),
			s.keys.channel(), pool, ref, newEpoch()).Slice()
		return err
	})
	if err != nil {
		return fmt.Errorf("redisstate: set state of %s in pool %q: %w: %w", ref, pool, ErrUnavailable, err)
	}
	st, epoch, ok := parseReply(reply)
	if !ok {
		return fmt.Errorf("redisstate: unexpected override reply %v", reply)
	}
	v := s.view
	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.publishLocked()
	pv := v.poolLocked(pool)
	if e := pv.entries[ref]; e.pending {
		// The operator's word replaces a mark this replica could not push.
		delete(pv.entries, ref)
	}
	if !v.applyLocked(pool, ref, st, epoch) {
		s.resyncWanted.Store(true)
	}
	return nil
}

// errDegraded is returned by call while the request path skips Redis.
var errDegraded = errors.New("redisstate: degraded, serving from the local view")

// errClosed is returned by call after Close.
var errClosed = errors.New("redisstate: closed")

// call runs f with the State's timeout. While Redis is known unreachable the
// request path does not wait on it (f is not run) unless always is set; the
// subscriber finds out when it returns. A failure that is not the caller giving
// up marks Redis unreachable.
func (s *State) call(ctx context.Context, op string, always bool, f func(ctx context.Context) error) error {
	if s.closed.Load() {
		return errClosed
	}
	if !always && !s.health.up() {
		return errDegraded
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	err := f(cctx)
	if err == nil || errors.Is(err, redis.Nil) {
		return nil
	}
	if ctx.Err() != nil {
		// The request went away (Envoy cancelled the stream): not Redis's fault.
		s.metrics.errors.WithLabelValues(op).Inc()
		return err
	}
	s.health.failed(ctx, op, err)
	return err
}

func (s *State) now() time.Time {
	if s.clock == nil {
		return time.Now()
	}
	return s.clock.Now()
}

// newEpoch is a fresh random epoch, offered to Redis in case the pool has none.
func newEpoch() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// parseReply reads a script reply {untilMs, seq, reason, epoch}.
func parseReply(reply []any) (stored, string, bool) {
	if len(reply) != 4 {
		return stored{}, "", false
	}
	var parts [4]string
	for i, r := range reply {
		switch v := r.(type) {
		case string:
			parts[i] = v
		case int64:
			parts[i] = strconv.FormatInt(v, 10)
		default:
			return stored{}, "", false
		}
	}
	st, ok := parseParts(parts[0], parts[1], parts[2])
	return st, parts[3], ok
}

// parseMeta reads HMGET meta epoch seq.
func parseMeta(vals []any) (epoch string, seq int64) {
	if len(vals) == 2 {
		epoch, _ = vals[0].(string)
		if s, ok := vals[1].(string); ok {
			seq, _ = strconv.ParseInt(s, 10, 64)
		}
	}
	return epoch, seq
}
