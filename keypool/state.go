package keypool

import (
	"context"
	"time"
)

// State is where the state of keys lives: process memory for one replica
// ([MemoryState]), Redis for several (package redisstate).
//
// Keys are named by [Key.Ref], never by value. Methods that may do I/O bound it by
// ctx and their own timeout; when shared state cannot be reached they answer from
// the replica's local view instead of failing: a request that a local decision can
// serve is never failed for an outage of the shared store.
type State interface {
	// Cooldown is this replica's current view of a key's state. It does no I/O: it is
	// what the first attempt of every request reads.
	Cooldown(pool, ref string) Cooldown

	// RequestView is the authoritative state of the keys refs and the keys this
	// request already failed with, read before a retry attempt picks a key.
	RequestView(ctx context.Context, pool string, refs []string, requestID string) RequestView

	// MarkFailed records in one atomic step that the key failed for requestID and
	// must cool down as c says, without shortening a longer cooldown already in
	// place. It returns the cooldown now in force. An empty requestID records only
	// the cooldown.
	MarkFailed(ctx context.Context, pool, ref, requestID string, c Cooldown) Cooldown

	// Override replaces the key's state, shorter or not: an operator disabling a key
	// or enabling it again (the zero Cooldown). Unlike the request path it reports a
	// failure to reach shared state, because an operator must know the action did not
	// reach the other replicas.
	Override(ctx context.Context, pool, ref string, c Cooldown) error
}

// RequestView is the state a retry attempt decides on.
type RequestView struct {
	// Cooldowns holds the state of each key asked for, by ref; a missing ref is available.
	Cooldowns map[string]Cooldown
	// Tried holds the refs of the keys this request already failed with.
	Tried []string
}

// DefaultRequestTTL is how long a request's tried keys are remembered: longer than
// any sensible route timeout, so every attempt of a request sees them.
const DefaultRequestTTL = 10 * time.Minute
