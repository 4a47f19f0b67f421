package redisstate

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// layout names the Redis keys and channel of one deployment (one prefix).
//
// Every key of a pool carries the hash tag {pool}, so a script or pipeline that
// touches several keys of one pool stays in one Redis Cluster hash slot. The
// change channel is a classic (not sharded) channel: Redis Cluster delivers a
// PUBLISH to the subscribers of every node.
type layout struct{ prefix string }

func (l layout) tag(pool string) string { return l.prefix + "{" + pool + "}" }

// meta is a hash {seq}: seq numbers the last change of the pool's keys,
// strictly increasing, from the Redis clock in microseconds so that it keeps
// growing across a restart or a failover. It has no TTL: one small hash per pool.
func (l layout) meta(pool string) string { return l.tag(pool) + ":meta" }

// cooldown is a string "untilMs seq markMs overrideMs reason" (see stored) that
// expires when the cooldown ends. An operator's enable leaves a tombstone, "0 seq
// markMs overrideMs " with a TTL of tombstoneTTL, so that a replica pushing back a
// mark from before the enable (after an outage) cannot undo it.
func (l layout) cooldown(pool, ref string) string { return l.tag(pool) + ":cd:" + ref }

// index is a sorted set ref → untilMs of the pool's cooldowns, so a resync finds
// them without scanning; it expires with its last cooldown.
func (l layout) index(pool string) string { return l.tag(pool) + ":idx" }

// tried is the set of refs a request failed with; it expires RequestTTL after the
// request's last failure.
func (l layout) tried(pool, requestID string) string {
	return l.tag(pool) + ":req:" + requestIDPart(requestID)
}

// channel carries one JSON message per change of a key's state.
func (l layout) channel() string { return l.prefix + "changes" }

// tombstoneTTL is how long Redis remembers an operator's enable: a replica cut
// off for longer than this could bring back a cooldown set before the enable.
const tombstoneTTL = 24 * time.Hour

// maxRequestIDLen bounds the request id part of a key name. x-request-id may come
// from a client; a longer one is replaced by its hash.
const maxRequestIDLen = 128

func requestIDPart(id string) string {
	if len(id) <= maxRequestIDLen {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// unixMillisCeil is t in unix milliseconds rounded up, so that storing a deadline
// never shortens it. The zero time is 0.
func unixMillisCeil(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	ms := t.UnixMilli()
	if t.After(time.UnixMilli(ms)) {
		ms++
	}
	return ms
}

// fromUnixMillis is the inverse of unixMillisCeil: 0 is the zero time.
func fromUnixMillis(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// stored is a key's state as Redis holds it: the cooldown (zero when available),
// the sequence number of the change that set it, and when (unix ms, by the clock
// of the replica that made it) the mark that decided the deadline was made.
// Redis also keeps when an operator last replaced the state; a replica's view
// does not need it.
type stored struct {
	c   keypool.Cooldown
	seq int64
	at  int64
}

// parseStored reads "untilMs seq markMs overrideMs reason".
func parseStored(v string) (stored, bool) {
	f := strings.SplitN(v, " ", 5)
	if len(f) != 5 {
		return stored{}, false
	}
	return parseParts(f[0], f[1], f[2], f[4])
}

func parseParts(until, seq, at, reason string) (stored, bool) {
	u, err1 := strconv.ParseInt(until, 10, 64)
	s, err2 := strconv.ParseInt(seq, 10, 64)
	a, err3 := strconv.ParseInt(at, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return stored{}, false
	}
	st := stored{seq: s, at: a}
	if u > 0 {
		st.c = keypool.Cooldown{Until: fromUnixMillis(u), Reason: keypool.Reason(reason)}
	}
	return st, true
}
