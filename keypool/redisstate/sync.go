package redisstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

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
// (re)subscription and, while degraded, once per health check interval. It
// returns when ctx is done.
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
		s.health.failed(ctx, op, err)
		first()
		sleep(ctx, wait)
		wait = min(wait*2, s.healthEvery)
	}

	// A degraded replica retries a resync at most once per interval, even when
	// notifications keep the subscription busy.
	var lastSync time.Time
	resync := func() {
		lastSync = time.Now()
		s.resync(ctx)
		first()
	}
	resyncDue := func() bool {
		if s.health.up() {
			return s.resyncWanted.Load()
		}
		return time.Since(lastSync) >= s.healthEvery
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
		if err != nil {
			if !isTimeout(err) {
				// go-redis reconnects and resubscribes on the next receive; the
				// subscription confirmation then triggers a resync.
				fail("subscribe", err)
				continue
			}
			switch {
			case pinged:
				s.dropPubSub(ps)
				ps = nil
				fail("subscribe", errNoPong)
			case resyncDue():
				resync()
			default:
				if err := ps.Ping(ctx); err != nil {
					fail("subscribe", err)
					continue
				}
				pinged = true
			}
			continue
		}

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
		if resyncDue() {
			resync()
		}
	}
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

// notification is the JSON a script publishes for one change.
type notification struct {
	Pool   string `json:"p"`
	Ref    string `json:"r"`
	Until  string `json:"u"`
	Seq    string `json:"s"`
	Reason string `json:"c"`
	Epoch  string `json:"e"`
}

// notified applies a change notification to the local view.
func (s *State) notified(payload string) {
	s.metrics.notifications.Inc()
	if s.hooks.dropNotification != nil && s.hooks.dropNotification(payload) {
		return
	}
	var n notification
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		s.resyncWanted.Store(true) // unreadable: read the state instead
		return
	}
	st, ok := parseParts(n.Until, n.Seq, n.Reason)
	if !ok || n.Pool == "" || n.Ref == "" {
		s.resyncWanted.Store(true)
		return
	}
	v := s.view
	v.mu.Lock()
	same := v.applyLocked(n.Pool, n.Ref, st, n.Epoch)
	v.publishLocked()
	v.mu.Unlock()
	if !same {
		s.resyncWanted.Store(true)
	}
}

// resync rebuilds the local view from Redis and pushes the marks Redis lacks;
// success makes the replica healthy again.
func (s *State) resync(ctx context.Context) {
	s.resyncWanted.Store(false)
	pools, pushed, err := s.synchronise(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.health.failed(ctx, "sync", err)
		}
		return
	}
	s.metrics.resyncs.Inc()
	s.health.recovered(ctx, pools, pushed)
}

// synchronise loads the scripts, finds the pools (in Redis and in the view) and
// synchronises each. It returns how many pools and pushed marks it handled.
func (s *State) synchronise(ctx context.Context) (pools, pushed int, err error) {
	for _, sc := range s.scripts.all() {
		if err := s.step(ctx, func(ctx context.Context) error { return sc.Load(ctx, s.client).Err() }); err != nil {
			return 0, 0, fmt.Errorf("load script: %w", err)
		}
	}
	names, err := s.scanPools(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("scan pools: %w", err)
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

// scanPools finds the pools that have state in Redis, on every master of a
// Cluster. SCAN walks the whole database, but only on (re)synchronisation.
func (s *State) scanPools(ctx context.Context) (map[string]struct{}, error) {
	var mu sync.Mutex
	found := make(map[string]struct{})
	scan := func(ctx context.Context, c redis.Cmdable) error {
		var cursor uint64
		for {
			var keys []string
			err := s.step(ctx, func(ctx context.Context) error {
				var err error
				keys, cursor, err = c.Scan(ctx, cursor, s.keys.metaPattern(), 1000).Result()
				return err
			})
			if err != nil {
				return err
			}
			mu.Lock()
			for _, k := range keys {
				if pool, ok := s.keys.poolOfMeta(k); ok {
					found[pool] = struct{}{}
				}
			}
			mu.Unlock()
			if cursor == 0 {
				return nil
			}
		}
	}
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
		return found, err
	}
	return found, scan(ctx, s.client)
}

// syncPool pushes the pool's marks Redis lacks and reloads the pool's view, in
// two round trips: the sync script, then the cooldowns it listed.
func (s *State) syncPool(ctx context.Context, pool string) (int, error) {
	now := s.now()
	known, entries := s.view.toPush(pool, now)
	keys := []string{s.keys.meta(pool), s.keys.index(pool)}
	args := []any{now.UnixMilli(), known, newEpoch(), s.keys.channel(), pool}
	for _, e := range entries {
		mode := "v"
		if e.pending {
			mode = "p"
		}
		keys = append(keys, s.keys.cooldown(pool, e.ref))
		args = append(args, e.ref, unixMillisCeil(e.c.Until), string(e.c.Reason), mode)
	}
	var reply []any
	err := s.step(ctx, func(ctx context.Context) error {
		var err error
		reply, err = s.scripts.sync.Run(ctx, s.client, keys, args...).Slice()
		return err
	})
	if err != nil {
		return 0, err
	}
	epoch, lost, seq, pushed, refs, err := parseSyncReply(reply)
	if err != nil {
		return 0, err
	}
	read := make(map[string]stored, len(refs))
	if len(refs) > 0 {
		cdKeys := make([]string, len(refs))
		for i, ref := range refs {
			cdKeys[i] = s.keys.cooldown(pool, ref)
		}
		var vals []any
		err := s.step(ctx, func(ctx context.Context) error {
			var err error
			vals, err = s.client.MGet(ctx, cdKeys...).Result()
			return err
		})
		if err != nil {
			return 0, err
		}
		for i, raw := range vals {
			str, _ := raw.(string)
			if st, ok := parseStored(str); ok {
				read[refs[i]] = st
			}
		}
	}
	s.view.resynced(pool, epoch, lost, seq, read, entries)
	return pushed, nil
}

// step runs one Redis call of a resync, bounded by the State's timeout.
func (s *State) step(ctx context.Context, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return f(ctx)
}

func parseSyncReply(reply []any) (epoch string, lost bool, seq int64, pushed int, refs []string, err error) {
	bad := fmt.Errorf("unexpected sync reply %v", reply)
	if len(reply) != 5 {
		return "", false, 0, 0, nil, bad
	}
	epoch, ok1 := reply[0].(string)
	lostN, ok2 := reply[1].(int64)
	seqS, ok3 := reply[2].(string)
	pushedN, ok4 := reply[3].(int64)
	list, ok5 := reply[4].([]any)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
		return "", false, 0, 0, nil, bad
	}
	seq, err = strconv.ParseInt(seqS, 10, 64)
	if err != nil {
		return "", false, 0, 0, nil, bad
	}
	for _, r := range list {
		ref, ok := r.(string)
		if !ok {
			return "", false, 0, 0, nil, bad
		}
		refs = append(refs, ref)
	}
	return epoch, lostN == 1, seq, int(pushedN), refs, nil
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
