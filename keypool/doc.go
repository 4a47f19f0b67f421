// Package keypool is the domain of envoy-keypool: API keys, their state, the
// cooldown rules and the per-request walk over a pool.
//
// It knows nothing of gRPC, Envoy, HTTP bodies or Redis. Transports call [Pool.Pick]
// for every upstream attempt and [Pool.Fail] when the provider rejected a key; where
// the state lives (process memory or Redis) is behind the [State] interface.
//
// # Key state rules
//
// A key is available, or cooling down until a time with a [Reason]. Nothing is
// permanent: an unauthorized key returns after its (long) cooldown or when an operator
// enables it again, so a pool never only shrinks. The length of a cooldown comes from
// the provider's hint when it gave one, else from the pool's default for the reason,
// and is clamped to the reason's [min, max]. A new mark never shortens a longer one
// already in place, whichever replica set it.
//
// Keys are tried in priority order (the order of the configuration): the first usable
// key wins, which keeps provider-side prompt caches warm. Within one request each key
// is tried at most once.
package keypool
