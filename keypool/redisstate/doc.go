// Package redisstate is the Redis implementation of keypool.State: several
// envoy-keypool replicas act as one pool.
//
// It owns the Redis data layout, the atomic marks (Lua scripts), the change
// notifications between replicas, the per-request tried keys, each replica's
// local view of key state, and the outage behaviour. It knows nothing of Envoy,
// gRPC or providers, and never sees a key value: keys are named by
// keypool.Key.Ref (id and an HMAC fingerprint), which is all Redis holds.
//
// # Speed
//
// Cooldown, which the first attempt of every request reads, answers from the
// local view with no I/O. Only failures write: MarkFailed is one script (one
// round trip). A retry's RequestView is one pipeline (one round trip) reading the
// authoritative cooldowns and the request's tried keys, so an attempt never
// reuses a key that failed for its request, whichever replica saw the failure and
// whether or not this replica got the notification.
//
// # Data layout
//
// With P the prefix (default "envoy-keypool:") and N the pool name:
//
//	P{N}:meta            hash {epoch, seq}; no TTL (one per pool)
//	P{N}:cd:<ref>        string "untilMs seq reason"; TTL = remaining cooldown
//	P{N}:idx             sorted set ref → untilMs; TTL = the latest cooldown
//	P{N}:req:<requestID> set of refs the request failed with; TTL = RequestTTL
//	Pchanges             channel: one JSON message per change {p, r, u, s, c, e}
//
// The pool name in braces is a Redis Cluster hash tag: all keys of a pool live in
// one slot, so each script and pipeline touches a single node. A request id longer
// than 128 bytes is replaced by its SHA-256. PUBLISH on a classic channel reaches
// the subscribers of every Cluster node.
//
// # Rules
//
// A mark keeps the later of the stored and the new deadline, and sets the TTL to
// the remaining cooldown; an operator's Override replaces the state. Deadlines are
// absolute unix milliseconds from the caller's clock: the local view decides
// whether a cooldown is over by comparing it with the clock, the Redis TTL only
// collects garbage.
//
// Every change gets a new seq for its pool, strictly increasing and taken from the
// Redis clock (microseconds) so that it keeps increasing across a failover to a
// replica that missed the last writes; the local view keeps, per key, the change
// with the highest seq, so notifications, script replies and reads may arrive in
// any order. The epoch is a random id created with the pool's state: when a
// replica finds a different one, Redis lost its data (a restart without
// persistence, a failover to an empty replica).
//
// # Outage
//
// Every call is bounded by Options.Timeout (default 50ms, below Envoy's 200ms
// ext_proc message_timeout). The first failure marks Redis unreachable and is
// logged once; from then on requests do not wait on Redis: Cooldown and
// RequestView answer from the local view and the tried keys this replica saw,
// and MarkFailed keeps its marks locally (pending). The subscriber reconnects by
// itself (backing off up to HealthCheckInterval) and, on every (re)subscription,
// resynchronises: it pushes the pending marks (never shortening), and when Redis
// lost the pool's state (new epoch) it pushes every unexpired mark of its view, so
// the pool converges on the union of what the replicas knew. An operator's enable
// made while this replica was away is not undone: without a new epoch the
// replica drops what Redis no longer holds. Recovery is logged once and Ready
// becomes nil again.
package redisstate
