package redisstate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"cdr.dev/slog/v3"
	"github.com/redis/go-redis/v9"
)

// minRetryWait is the first wait after a failed connection to the change channel;
// it doubles up to HealthCheckInterval, so an outage costs one attempt per
// interval, not a tight loop.
const minRetryWait = 50 * time.Millisecond

// errNoPong: the change subscription's connection did not answer a PING within a
// health check interval, though it reported no error (a network partition).
var errNoPong = errors.New("redisstate: change subscription did not answer PING")

// run is the subscriber: it keeps the change subscription up, applies change
// notifications to the local view, and resynchronises the view on every
// (re)subscription, when Redis lost writes (checkVersions, once per health
// check interval), and, while degraded, once per interval. It returns when ctx
// is done.
func (s *State) run(ctx context.Context) {
	defer close(s.done)
	var firstOnce sync.Once
	first := func() { firstOnce.Do(func() { close(s.firstSync) }) }
	defer first()

	wait := minRetryWait
	fail := func(op string, err error) {
		if ctx.Err() != nil {
			return
		}
		s.health.log.Debug(ctx, "redis change subscription failed", slog.F("op", op), slog.Error(err))
		s.health.lost(ctx, op, err)
		s.reloadTopology()
		first()
		sleep(ctx, wait)
		wait = min(wait*2, s.healthEvery)
	}

	// A degraded replica retries a resync at most once per interval, even when
	// notifications keep the subscription busy; a healthy one checks its view
	// against Redis once per interval, a resync counting as a check.
	var lastSync, lastCheck time.Time
	resync := func() {
		lastSync = time.Now()
		lastCheck = lastSync
		s.resync(ctx)
		first()
	}
	maintain := func() {
		if !s.health.up() {
			if time.Since(lastSync) >= s.healthEvery {
				resync()
			}
			return
		}
		if time.Since(lastCheck) >= s.healthEvery {
			lastCheck = time.Now()
			s.checkVersions(ctx)
		}
		if s.resyncWanted.Load() {
			resync()
		}
	}

	var ps *redis.PubSub
	pinged := false
	for ctx.Err() == nil {
		if ps == nil {
			if ps = s.newPubSub(ctx); ps == nil {
				return // closed
			}
			sctx, cancel := context.WithTimeout(ctx, s.healthEvery+s.timeout)
			err := ps.Subscribe(sctx, s.keys.channel())
			cancel()
			if err != nil {
				s.dropPubSub(ps)
				ps = nil
				fail("subscribe", err)
				continue
			}
			pinged = false
		}

		msg, err := ps.ReceiveTimeout(ctx, s.healthEvery)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			wait = minRetryWait
			pinged = false
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					resync()
				}
			case *redis.Message:
				s.notified(m.Payload)
			}
		case !isTimeout(err):
			// go-redis reconnects and resubscribes on the next receive; the
			// subscription confirmation then triggers a resync.
			fail("subscribe", err)
			continue
		case pinged:
			s.dropPubSub(ps)
			ps = nil
			fail("subscribe", errNoPong)
			continue
		case s.health.up():
			// Idle for an interval: the subscription must still answer. (While
			// degraded, the resync or the subscription confirmation tells.)
			if err := ps.Ping(ctx); err != nil {
				fail("subscribe", err)
				continue
			}
			pinged = true
		}
		maintain()
	}
}

// checkVersions compares, for each pool where Redis confirmed a version to
// this replica, the pool's seq in Redis with that version: a lower seq means
// Redis lost writes (a restart without persistence, a failover to a replica
// that missed them), and a resync pushes them back. It is what makes a
// replica converge after a failover without waiting for traffic: one HGET per
// pool with state, pipelined (one round trip per Cluster node), once per
// health check interval. A failed check counts as a failed call and asks for
// a resync, a Cluster client reloading its slot map first.
func (s *State) checkVersions(ctx context.Context) {
	confirmed := s.view.confirmedVersions()
	if len(confirmed) == 0 {
		return
	}
	cmds := make(map[string]*redis.StringCmd, len(confirmed))
	err := s.step(ctx, func(ctx context.Context) error {
		_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for pool := range confirmed {
				cmds[pool] = p.HGet(ctx, s.keys.meta(pool), "seq")
			}
			return nil
		})
		if errors.Is(err, redis.Nil) {
			err = nil // a pool without seq: checked below
		}
		return err
	})
	if err == nil {
		err = s.compareVersions(ctx, confirmed, cmds)
	}
	if err != nil {
		if ctx.Err() == nil {
			s.reloadTopology()
			s.resyncWanted.Store(true)
			s.health.failed(ctx, "check", err)
		}
		return
	}
	s.health.succeeded()
}

// compareVersions asks for a resync when a pool's seq in Redis (cmds) is lower
// than the version Redis confirmed (confirmed).
func (s *State) compareVersions(ctx context.Context, confirmed map[string]int64, cmds map[string]*redis.StringCmd) error {
	for pool, cmd := range cmds {
		seq, err := cmd.Int64()
		if errors.Is(err, redis.Nil) {
			seq, err = 0, nil // Redis lost the pool's seq too
		}
		if err != nil {
			return err
		}
		if seq < confirmed[pool] {
			s.health.log.Debug(ctx, "redis holds an older state of the pool than this replica saw: resynchronising",
				slog.F("pool", pool), slog.F("redis_seq", seq), slog.F("seen", confirmed[pool]))
			s.resyncWanted.Store(true)
		}
	}
	return nil
}

// newPubSub starts a subscription object without I/O, or returns nil after Close.
func (s *State) newPubSub(ctx context.Context) *redis.PubSub {
	s.psMu.Lock()
	defer s.psMu.Unlock()
	if s.closed.Load() {
		return nil
	}
	s.ps = s.client.Subscribe(ctx)
	return s.ps
}

func (s *State) dropPubSub(ps *redis.PubSub) {
	s.psMu.Lock()
	defer s.psMu.Unlock()
	_ = ps.Close()
	if s.ps == ps {
		s.ps = nil
	}
}

// notified applies a change notification, the key's whole state, to the local
// view: one key, whatever the pool size. The replica's own changes come back
// too and change nothing (the script's reply already applied them).
func (s *State) notified(payload string) {
	s.metrics.notifications.Inc()
	if s.hooks.dropNotification != nil && s.hooks.dropNotification(payload) {
		return
	}
	pool, ref, ks, ok := parseKeyState(payload)
	if !ok {
		s.resyncWanted.Store(true) // unreadable: read the state instead
		return
	}
	s.view.applyNotified(pool, ref, ks, s.now())
}

// resync pushes what Redis lacks and reloads the local view; success makes the
// replica healthy again. A failed resync is retried: at once while Redis is
// up, once per health check interval while it is not.
func (s *State) resync(ctx context.Context) {
	s.resyncWanted.Store(false)
	pools, pushed, err := s.synchronise(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.health.log.Debug(ctx, "redis resynchronisation failed", slog.Error(err))
			s.resyncWanted.Store(true)
			s.reloadTopology()
			if s.health.up() {
				s.health.failed(ctx, "sync", err)
			} else {
				s.health.lost(ctx, "sync", err)
			}
		}
		return
	}
	s.metrics.resyncs.Inc()
	s.health.recovered(ctx, pools, pushed)
}

// synchronise synchronises each pool this replica serves (Options.Pools) or
// knows of. It returns how many pools and pushed marks it
// handled. It never scans the keyspace: the pools are known.
func (s *State) synchronise(ctx context.Context) (pools, pushed int, err error) {
	names := make(map[string]struct{}, len(s.pools))
	for _, name := range s.pools {
		names[name] = struct{}{}
	}
	for _, name := range s.view.poolNames() {
		names[name] = struct{}{}
	}
	for pool := range names {
		n, err := s.syncPool(ctx, pool)
		if err != nil {
			return 0, 0, fmt.Errorf("pool %q: %w", pool, err)
		}
		pushed += n
	}
	return len(names), pushed, nil
}

// syncPool pushes the pool's state Redis lacks and reloads the pool's view, in
// two round trips: the scripts loaded on the pool's node (so that the request
// path's EVALSHA finds them, even in a Redis that came back empty) with the
// index of the pool's keys with state, then the sync script on those keys and
// the view's.
func (s *State) syncPool(ctx context.Context, pool string) (int, error) {
	var indexed []string
	err := s.step(ctx, func(ctx context.Context) error {
		node, err := s.nodeOf(ctx, pool)
		if err != nil {
			return err
		}
		var zr *redis.StringSliceCmd
		_, err = node.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, src := range s.scripts.sources() {
				p.ScriptLoad(ctx, src)
			}
			zr = p.ZRange(ctx, s.keys.index(pool), 0, -1)
			return nil
		})
		indexed = zr.Val()
		return err
	})
	if err != nil {
		return 0, err
	}
	now := s.now()
	pushed := s.view.toPush(pool, now)
	given := make(map[string]bool, len(pushed))
	for _, p := range pushed {
		given[p.ref] = true
	}
	for _, ref := range indexed {
		if !given[ref] {
			pushed = append(pushed, pushKey{ref: ref, mode: "r"})
		}
	}
	keys := []string{s.keys.meta(pool), s.keys.index(pool)}
	args := []any{now.UnixMilli(), s.keys.channel(), pool, tombstoneTTL.Milliseconds()}
	for _, p := range pushed {
		keys = append(keys, s.keys.key(pool, p.ref))
		var ovAt, ovUntil int64
		ovReason := "-"
		if p.ov != nil {
			ovAt, ovUntil, ovReason = p.ov.at, unixMillisCeil(p.ov.c.Until), orDash(string(p.ov.c.Reason))
		}
		args = append(args, p.ref, p.vk, ovAt, ovUntil, ovReason, p.mode, len(p.scopes))
		for _, sc := range p.scopes {
			args = append(args, sc.model, unixMillisCeil(sc.s.e.Until), sc.s.at, sc.s.e.Span.Milliseconds(), orDash(string(sc.s.e.Reason)))
		}
	}
	var reply []any
	err = s.step(ctx, func(ctx context.Context) error {
		var err error
		reply, err = s.scripts.sync.Run(ctx, s.client, keys, args...).Slice()
		return err
	})
	if err != nil {
		return 0, err
	}
	n, states, seq, err := parseSyncReply(pool, reply, pushed)
	if err != nil {
		return 0, err
	}
	s.view.resynced(pool, states, pushed, seq, s.now())
	return n, nil
}

// nodeOf is the client of the node holding the pool's keys: the master of its
// hash slot on a Cluster (as the client's slot map has it), the client itself
// otherwise. A SCRIPT LOAD sent through a ClusterClient goes to every node, and
// fails when any is down, though the pool's node answers.
func (s *State) nodeOf(ctx context.Context, pool string) (redis.Cmdable, error) {
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		return cc.MasterForKey(ctx, s.keys.meta(pool))
	}
	return s.client, nil
}

// step runs one Redis call of the background work (a resync, a check, a batch
// of Forgets): bounded by the dial timeout, not by the request path's tighter
// Timeout, so a Redis that is slow now and then still resynchronises. Its
// context says it is background work, so that a hook counting what requests
// cost can leave it out (IsBackground).
func (s *State) step(ctx context.Context, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, backgroundKey{}, true), s.backgroundTimeout)
	defer cancel()
	return f(ctx)
}

type backgroundKey struct{}

// IsBackground reports whether ctx is that of a Redis call the State makes on
// its own (resyncs, checks, Forget's batches) rather than for a request: a
// go-redis hook given ctx can tell what requests cost from upkeep.
func IsBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}

// parseSyncReply reads {pushed, {state_1..state_n}, seq}; a key Redis holds
// nothing for is nil.
func parseSyncReply(pool string, reply []any, keys []pushKey) (int, map[string]*keyState, int64, error) {
	bad := fmt.Errorf("unexpected sync reply %v", reply)
	if len(reply) != 3 {
		return 0, nil, 0, bad
	}
	pushed, ok1 := reply[0].(int64)
	list, ok2 := reply[1].([]any)
	seqText, ok3 := reply[2].(string)
	seq, err := strconv.ParseInt(seqText, 10, 64)
	if !ok1 || !ok2 || !ok3 || err != nil || len(list) != len(keys) {
		return 0, nil, 0, bad
	}
	states := make(map[string]*keyState, len(keys))
	for i, r := range list {
		states[keys[i].ref] = nil
		if r == nil {
			continue
		}
		ks, err := keyStateOf(pool, keys[i].ref, r)
		if err != nil {
			return 0, nil, 0, bad
		}
		states[keys[i].ref] = &ks
	}
	return int(pushed), states, seq, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
