package redisstate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// View implements keypool.State from the local view: one atomic load and one
// map lookup, no I/O, no lock, no allocation.
func (s *State) View(pool string) *keypool.View { return s.view.get(pool) }

// Tried implements keypool.State with one round trip (SMEMBERS), whatever the
// size of the pool: Redis's set is the answer (a request another replica
// forgot is forgotten here too). While Redis is unreachable it answers with the
// keys this replica saw the request try.
func (s *State) Tried(ctx context.Context, pool, requestID string) []string {
	if requestID == "" {
		return nil
	}
	var remote []string
	err := s.call(ctx, pool, "tried", false, func(ctx context.Context) error {
		var err error
		remote, err = s.client.SMembers(ctx, s.keys.tried(pool, requestID)).Result()
		return err
	})
	if err != nil {
		return s.view.tried.Get(pool, requestID, s.now())
	}
	return remote
}

// RecordTried implements keypool.State with one script.
func (s *State) RecordTried(ctx context.Context, pool, ref, requestID string) []string {
	if requestID == "" {
		return nil
	}
	local := s.view.tried.Add(pool, requestID, ref, s.now())
	var remote []string
	err := s.call(context.WithoutCancel(ctx), pool, "tried", false, func(ctx context.Context) error {
		var err error
		remote, err = s.scripts.tried.Run(ctx, s.client, []string{s.keys.tried(pool, requestID)},
			ref, s.triedTTL.Milliseconds()).StringSlice()
		return err
	})
	if err != nil {
		return local
	}
	return union(remote, local)
}

// Mark implements keypool.State with one script: the later deadline, the
// request's tried key and the change notification, atomically. While Redis is
// unreachable the mark is kept locally and pushed when Redis returns.
func (s *State) Mark(ctx context.Context, pool string, m keypool.Mark) keypool.MarkResult {
	now := s.now()
	local := s.view.tried.Add(pool, m.RequestID, m.Scope.Ref, now)
	// The failure happened whether or not the request is still there: the mark
	// must reach the other replicas even if Envoy cancelled the stream. It is
	// still bounded by the State's timeout.
	ctx = context.WithoutCancel(ctx)
	keys := []string{s.keys.meta(pool), s.keys.key(pool, m.Scope.Ref), s.keys.index(pool)}
	if m.RequestID != "" {
		keys = append(keys, s.keys.tried(pool, m.RequestID))
	}
	var reply []any
	err := s.call(ctx, pool, "mark", false, func(ctx context.Context) error {
		var err error
		reply, err = s.scripts.mark.Run(ctx, s.client, keys,
			m.Scope.Model, unixMillisCeil(m.Cooldown.Until), m.Span.Milliseconds(), orDash(string(m.Cooldown.Reason)),
			now.UnixMilli(), s.keys.channel(), pool, m.Scope.Ref, s.triedTTL.Milliseconds(), tombstoneTTL.Milliseconds()).Slice()
		return err
	})
	var res keypool.MarkResult
	if err == nil {
		res, err = s.applyReply(pool, m.Scope, reply, local)
	}
	if err != nil {
		s.resyncWanted.Store(true)
		res = s.view.markLocal(pool, m, now)
		res.Tried = local
	}
	return res
}

// Corroborate implements keypool.State with one script: the request joins the
// window of (scope, class) that every replica shares, and the scope is marked
// when a quorum agrees. While Redis is unreachable the replica counts the
// failures it sees by itself.
func (s *State) Corroborate(ctx context.Context, pool string, c keypool.Corroboration) keypool.MarkResult {
	now := s.now()
	local := s.view.tried.Add(pool, c.RequestID, c.Scope.Ref, now)
	var member string
	if c.RequestID != "" {
		member = keypool.RequestKey(c.RequestID)
	} else {
		member = s.anonMember()
	}
	ctx = context.WithoutCancel(ctx)
	keys := []string{s.keys.meta(pool), s.keys.key(pool, c.Scope.Ref), s.keys.index(pool), s.keys.window(pool, c.Scope, c.Class)}
	if c.RequestID != "" {
		keys = append(keys, s.keys.tried(pool, c.RequestID))
	}
	var reply []any
	err := s.call(ctx, pool, "corroborate", false, func(ctx context.Context) error {
		var err error
		reply, err = s.scripts.corroborate.Run(ctx, s.client, keys,
			c.Scope.Model, unixMillisCeil(c.Cooldown.Until), c.Span.Milliseconds(), orDash(string(c.Cooldown.Reason)),
			now.UnixMilli(), s.keys.channel(), pool, c.Scope.Ref, s.triedTTL.Milliseconds(), tombstoneTTL.Milliseconds(),
			member, c.Window.Milliseconds(), max(c.Quorum, 1)).Slice()
		return err
	})
	var res keypool.MarkResult
	if err == nil {
		if len(reply) != 4 {
			err = fmt.Errorf("unexpected corroborate reply %v", reply)
		} else if res, err = s.applyReply(pool, c.Scope, reply[:3], local); err == nil {
			n, _ := reply[3].(int64)
			res.Agreeing = int(n)
		}
	}
	if err != nil {
		s.resyncWanted.Store(true)
		res = s.view.corroborateLocal(pool, c, member, now)
		res.Tried = local
	}
	return res
}

// AcquireProbe implements keypool.State with one script: one lease per scope
// across replicas. While Redis is unreachable the replica grants leases by
// itself (one probe per replica).
func (s *State) AcquireProbe(ctx context.Context, pool string, scope keypool.Scope, lease keypool.Lease) (keypool.ProbeGrant, keypool.Entry) {
	now := s.now()
	var reply []any
	err := s.call(ctx, pool, "probe", false, func(ctx context.Context) error {
		var err error
		reply, err = s.scripts.acquire.Run(ctx, s.client,
			[]string{s.keys.meta(pool), s.keys.key(pool, scope.Ref), s.keys.index(pool)},
			scope.Model, now.UnixMilli(), lease.TTL.Milliseconds(), orDash(lease.Holder),
			s.keys.channel(), pool, scope.Ref, tombstoneTTL.Milliseconds()).Slice()
		return err
	})
	if err == nil {
		grant, ks, perr := s.parseCodeReply(pool, scope.Ref, reply)
		if perr == nil {
			s.view.apply(pool, scope.Ref, ks, now)
			return keypool.ProbeGrant(grant), ks.scopes[scope.Model].e
		}
		s.health.failed(ctx, "probe", perr)
	}
	return s.view.acquireLocal(pool, scope, lease, now)
}

// EndProbe implements keypool.State with one script.
func (s *State) EndProbe(ctx context.Context, pool string, scope keypool.Scope, holder string, end keypool.ProbeEnd) {
	now := s.now()
	how := "r"
	if end == keypool.ProbeSucceeded {
		how = "s"
	}
	var reply []any
	err := s.call(context.WithoutCancel(ctx), pool, "probe", false, func(ctx context.Context) error {
		var err error
		reply, err = s.scripts.endProbe.Run(ctx, s.client,
			[]string{s.keys.meta(pool), s.keys.key(pool, scope.Ref), s.keys.index(pool)},
			scope.Model, now.UnixMilli(), orDash(holder), how,
			s.keys.channel(), pool, scope.Ref, tombstoneTTL.Milliseconds()).Slice()
		return err
	})
	if err == nil {
		if _, ks, perr := s.parseCodeReply(pool, scope.Ref, reply); perr == nil {
			s.view.apply(pool, scope.Ref, ks, now)
			return
		}
	}
	s.view.endProbeLocal(pool, scope, holder, end, now)
}

// Override implements keypool.State: it replaces the key's state in Redis and
// tells every replica. It tries Redis even while the replica is degraded. When
// Redis cannot take it, the action applies to this replica's view at once and
// reaches Redis when it returns (a later operator action through another
// replica wins); the error is then a *keypool.PendingError.
func (s *State) Override(ctx context.Context, pool, ref string, c keypool.Cooldown) error {
	now := s.now()
	until := unixMillisCeil(c.Until)
	if !c.Until.After(now) {
		until, c = 0, keypool.Cooldown{}
	}
	var reply []any
	err := s.call(ctx, pool, "override", true, func(ctx context.Context) error {
		var err error
		reply, err = s.scripts.override.Run(ctx, s.client,
			[]string{s.keys.meta(pool), s.keys.key(pool, ref), s.keys.index(pool)},
			until, orDash(string(c.Reason)), now.UnixMilli(), now.UnixMilli(),
			s.keys.channel(), pool, ref, tombstoneTTL.Milliseconds()).Slice()
		return err
	})
	if err == nil {
		var ks keyState
		if _, ks, err = s.parseCodeReply(pool, ref, reply); err == nil {
			s.view.mu.Lock()
			s.view.noteLocked(pool, ref)
			if k := s.view.pools[pool][ref]; k != nil && k.hasPending() {
				// The operator's word replaces what this replica could not push.
				k.ov, k.v = nil, 0
				clear(k.scopes)
			}
			s.view.applyLocked(pool, ref, ks)
			s.view.flushLocked(pool, now)
			s.view.mu.Unlock()
			return nil
		}
	}
	s.view.overrideLocal(pool, ref, c, now)
	s.resyncWanted.Store(true)
	return &keypool.PendingError{Err: fmt.Errorf("redisstate: key %s of pool %q: %w: %w", ref, pool, ErrUnavailable, err)}
}

// applyReply reads a {changed, key state, tried} reply into the view and the
// result.
func (s *State) applyReply(pool string, scope keypool.Scope, reply []any, local []string) (keypool.MarkResult, error) {
	var res keypool.MarkResult
	if len(reply) < 3 {
		return res, fmt.Errorf("unexpected reply %v", reply)
	}
	changed, _ := reply[0].(int64)
	ks, err := keyStateOf(pool, scope.Ref, reply[1])
	if err != nil {
		return res, err
	}
	s.view.apply(pool, scope.Ref, ks, s.now())
	res.Changed = changed == 1
	res.Entry = ks.scopes[scope.Model].e
	if list, ok := reply[2].([]any); ok && len(list) > 0 {
		remote := make([]string, 0, len(list))
		for _, r := range list {
			if str, ok := r.(string); ok {
				remote = append(remote, str)
			}
		}
		res.Tried = union(remote, local)
	} else if local != nil {
		res.Tried = local
	}
	return res, nil
}

// parseCodeReply reads a {code, key state} reply.
func (s *State) parseCodeReply(pool, ref string, reply []any) (int64, keyState, error) {
	if len(reply) != 2 {
		return 0, keyState{}, fmt.Errorf("unexpected reply %v", reply)
	}
	code, _ := reply[0].(int64)
	ks, err := keyStateOf(pool, ref, reply[1])
	if err != nil {
		return 0, keyState{}, err
	}
	return code, ks, nil
}

// keyStateOf reads a script's reply field that must be the state of the
// pool's key ref.
func keyStateOf(pool, ref string, field any) (keyState, error) {
	msg, _ := field.(string)
	p, r, ks, ok := parseKeyState(msg)
	if !ok || p != pool || r != ref {
		return keyState{}, fmt.Errorf("unexpected key state %q", msg)
	}
	return ks, nil
}

// anonMember names a failure without a request id for a corroboration window:
// unique across replicas (a random prefix drawn once per State) and cheap.
func (s *State) anonMember() string {
	return s.anonPrefix + strconv.FormatUint(s.anonSeq.Add(1), 36)
}

func anonPrefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "anon-" + hex.EncodeToString(b[:]) + "-"
}

// union is a with b's refs that a lacks.
func union(a, b []string) []string {
	for _, r := range b {
		if !slices.Contains(a, r) {
			a = append(a, r)
		}
	}
	return a
}

// forgetReq is a request whose tried set Forget drops.
type forgetReq struct{ pool, requestID string }

// forgetQueue bounds the requests waiting for their tried set to be deleted;
// past it Forget drops the deletion, and the tried set's TTL collects it.
const forgetQueue = 4096

// Forget implements keypool.State: the local set goes at once; the deletion in
// Redis is queued, and sent in batches by one goroutine, so that the end of a
// request never waits on Redis.
func (s *State) Forget(_ context.Context, pool, requestID string) {
	if requestID == "" {
		return
	}
	s.view.tried.Forget(pool, requestID)
	select {
	case s.forgets <- forgetReq{pool, requestID}:
	default: // the TTL collects it
	}
}

// forgetLoop deletes the queued tried sets, up to 256 per pipeline.
func (s *State) forgetLoop(ctx context.Context) {
	defer close(s.forgetDone)
	batch := make([]string, 0, 256)
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-s.forgets:
			batch = append(batch[:0], s.keys.tried(r.pool, r.requestID))
		}
	drain:
		for len(batch) < cap(batch) {
			select {
			case r := <-s.forgets:
				batch = append(batch, s.keys.tried(r.pool, r.requestID))
			default:
				break drain
			}
		}
		if !s.health.up() {
			continue // Redis's TTL collects them
		}
		err := s.step(ctx, func(ctx context.Context) error {
			_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range batch {
					p.Del(ctx, k)
				}
				return nil
			})
			return err
		})
		if err != nil && ctx.Err() == nil {
			s.metrics.errors.WithLabelValues("forget").Inc()
		}
	}
}
