// Package keypool is the domain of envoy-keypool: API keys, their state per key and
// per model, the failure policy, the selection strategies and the per-request walk
// over a pool.
//
// It knows nothing of gRPC, Envoy, HTTP bodies or Redis. A transport calls, for
// every upstream attempt, [Pool.Pick]; then [Pool.Fail] when the provider refused
// the key (package providers classifies the answer into a [Failure]),
// [Pool.Finish] for any other answer, or [Pool.Release] when the stream ended with
// none. Where the state lives (process memory, or Redis for several replicas) is
// behind the [State] interface.
//
// # Key state rules
//
// State is kept per [Scope]: a key, or a (key, model) pair. A scope is available,
// cooling until a time for a [Reason], or probing (its cooldown ended and one
// request at a time tries it). A key serves a request for model M when neither its
// key-wide scope nor its (key, M) scope holds it back. Nothing is permanent: every
// cooldown ends, and an operator may enable a key at any time, so a pool never only
// shrinks.
//
// Two decisions are kept apart: failing over (this request skips the key and
// retries with the next) and cooling (every request skips the key for a while).
// Each failure [Class] maps to an [Action] in the pool's [FailurePolicy]
// ([DefaultActions] argues the defaults):
//   - cool: the scope cools, and the request fails over;
//   - failover: only the request skips the key;
//   - corroborate: the request fails over, and the scope cools once Quorum
//     distinct requests (3) saw the class on it within Window (10s), so one client
//     cannot cool a pool;
//   - pass: no key failure; the provider's answer is the client's.
//
// Rate-limit classes cool (key, model) when the model is known; credential and
// quota failures are key-wide. A cooldown lasts what the provider asked for (the
// [Failure]'s [Hint]), else the reason's default, clamped to the reason's [min,
// max] ([DefaultPolicy]); a new mark never shortens a later one, whichever replica
// set it.
//
// When a cooldown ends the scope is probed: one request at a time, across replicas,
// holds a lease (30s by default) and tries the key while the others skip it; first
// attempts probe, a retry only when no other key can serve it. A
// healthy answer returns the scope to service and forgets its doubling; a failure
// whose action cools or corroborates cools it again at once for twice its last
// span, capped at the reason's max and never shorter than the provider's hint; any
// other ending frees the lease for the next request. A scope nobody probed within
// one span (at least a minute) after its cooldown retires and is available again.
//
// A successful answer's [Headroom] steers before a 429: when its remaining requests
// are 0, or its remaining tokens fall below the pool's floor, the scope is taken out
// until the limit's reset (reason depleted). It is written only when it crosses the
// threshold: an answer finding the scope out at least that long writes nothing.
//
// # Selection
//
// The pool's [Strategy] chooses among the keys that no scope holds back:
// priority (the first in the configuration's order, which keeps provider prompt
// caches warm), weighted (by weight), or tiered (the first tier with a usable key,
// by weight inside it). Within one request each key is tried at most once: the
// request's tried set, shared by the replicas, holds the keys that failed for it,
// from its first failure until it ends (a healthy answer, the provider's answer
// passed on, or the exhaustion answer) or a short TTL after its last failure (10s).
//
// When no key is left the attempt gets an [*ExhaustedError]: rate limited (429
// with the time until the soonest key returns for the request's model) when any
// key will serve again by itself, cooling for a rate limit, depletion or quota,
// probed by another request, or only tried by this request; auth failed (502) when
// every key that is not disabled was refused by the provider; unavailable (503)
// when an operator disabled every key.
//
// # Costs
//
// A healthy first attempt reads only the replica's local view ([State.View]): no
// I/O, no lock, no allocation, and a cost independent of the pool's size, since
// the pool keeps a pick index (the candidates per strategy and model, rebuilt when
// the view changes or a scope changes phase) instead of walking its keys. A retry
// reads the request's tried set once ([State.Tried]); a failure is one atomic write.
//
// # Bounds
//
// Model names come from clients: [ModelName] keeps at most [MaxModelLen] characters
// of a safe alphabet and hashes anything else, and at most PoolOptions.MaxModels
// (64) models of a pool hold state at once; past that, a model-scoped cooldown
// applies key-wide. Request ids are kept only hashed ([RequestKey], [TriedSet]).
package keypool
