// Package redisstate is the Redis implementation of keypool.State: several
// envoy-keypool replicas act as one pool.
//
// It owns the Redis data layout, the atomic writes (Lua scripts), the change
// notifications between replicas, the per-request tried sets, each replica's
// local view of key state, and the outage behaviour. It knows nothing of Envoy,
// gRPC or providers, and never sees a key value: keys are named by
// keypool.Key.Ref (id and an HMAC fingerprint) and requests by
// keypool.RequestKey (a hash), which is all Redis holds.
//
// # Speed
//
// View, which the first attempt of every request reads, answers from the local
// view: one atomic load, no I/O, no lock, no allocation. Only failures, probes
// and operators write, each with one script (one round trip): Mark, RecordTried,
// Corroborate, AcquireProbe, EndProbe, Override. A retry's Tried is one
// SMEMBERS, whatever the pool's size. Forget is queued and sent in batches.
//
// A change notification changes one key of the local view; the View the
// requests read is published as a new immutable map of the pool's scopes with
// state (a copy of the previous map with that key's scopes replaced). A small
// View is published by the subscriber at once; a large one by a publisher
// goroutine that takes every change arriving while it copies in its next
// copy, so that a burst of notifications costs far fewer copies than changes.
// A call's reply is in force in the View when the call returns.
//
// # Data layout
//
// With P the prefix (default "envoy-keypool:") and N the pool name:
//
//	P{N}:k:<ref>         hash: v, o, and one field per scope ("s:" key-wide, "s:<model>")
//	P{N}:idx             sorted set ref → when the key's state retires
//	P{N}:t:<requestKey>  set of refs the request failed with; TTL = RequestTTL
//	P{N}:c:<ref>|<model>|<class>  sorted set of requests agreeing on a failure
//	P{N}:meta            hash {seq}; no TTL (one per pool)
//	Pchanges             channel: one message per changed key, its whole state
//
// The pool name in braces is a Redis Cluster hash tag: every key a script
// touches lives in one slot. PUBLISH on a classic channel reaches the
// subscribers of every Cluster node.
//
// # Rules
//
// A mark keeps the later of the stored and the new deadline; an operator's
// Override replaces the key-wide state (disable) or clears every scope (enable).
// Deadlines are absolute unix milliseconds from the caller's clock: the local
// view decides phases by comparing them with the clock, the Redis TTL (the
// scope's retirement: cooldown plus its probe window) only collects garbage.
//
// Every change of a key gets a new version, taken from the Redis clock
// (microseconds) so that it keeps growing across a restart or a failover; the
// local view keeps, per key, the state with the highest version, so
// notifications, replies and reads may arrive in any order. Changes are also
// ordered by when they were made (the writer's clock): a mark made before the
// key's last operator action is dropped, an action made before the last one
// too, so that a call that timed out but still lands, or what a replica pushes
// after an outage, cannot undo a later action.
//
// # Outage
//
// Every request-path call is bounded by Options.Timeout (default 50ms, at most
// 150ms). One slow call is not an outage: Redis is declared unreachable after 3
// failed calls in a row, 10 of the last 20, or a change subscription that
// stopped answering. From then on requests do not wait on Redis: reads answer
// from the local view and the tried sets this replica saw; marks,
// corroborations, probe leases and operator actions apply locally, the marks and
// actions pending. The subscriber reconnects by itself and, on every
// (re)subscription, resynchronises the pools it was told about (Options.Pools)
// and those it used, without scanning the keyspace: it pushes what is pending,
// and the state Redis lost (a key whose version in Redis is older than the one
// this replica saw), never shortening. Recovery is logged once and Ready becomes
// nil again.
//
// Redis can lose writes without any connection breaking: a Cluster master
// fails over to a replica that missed them while the subscription lives on
// another node, or someone flushes it. Once per health check interval each
// replica reads its pools' seq (one HGET each, pipelined) and resynchronises
// when Redis holds less than it confirmed, so the pool converges without
// waiting for traffic.
package redisstate
