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

// meta is a hash {epoch, seq}: the epoch is a random id created with the pool's
// state in this Redis (a new epoch means Redis lost the state), seq numbers the
// last change of the pool's keys (strictly increasing, from the Redis clock in
// microseconds). It has no TTL: one small hash per pool.
func (l layout) meta(pool string) string { return l.tag(pool) + ":meta" }

// cooldown is a string "untilMs seq reason" that expires when the cooldown ends.
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

// metaPattern matches the meta key of every pool, for SCAN.
func (l layout) metaPattern() string { return escapeGlob(l.prefix) + "{*}:meta" }

// poolOfMeta returns the pool whose meta key is key.
func (l layout) poolOfMeta(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, l.prefix+"{")
	if !ok {
		return "", false
	}
	pool, ok := strings.CutSuffix(rest, "}:meta")
	return pool, ok && pool != ""
}

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

func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
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

// stored is a cooldown as Redis holds it, with the sequence number of the change
// that set it.
type stored struct {
	c   keypool.Cooldown
	seq int64
}

// parseStored reads "untilMs seq reason".
func parseStored(v string) (stored, bool) {
	u, rest, ok := strings.Cut(v, " ")
	if !ok {
		return stored{}, false
	}
	s, reason, ok := strings.Cut(rest, " ")
	if !ok {
		return stored{}, false
	}
	return parseParts(u, s, reason)
}

func parseParts(until, seq, reason string) (stored, bool) {
	u, err1 := strconv.ParseInt(until, 10, 64)
	s, err2 := strconv.ParseInt(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return stored{}, false
	}
	if u <= 0 {
		return stored{seq: s}, true
	}
	return stored{c: keypool.Cooldown{Until: fromUnixMillis(u), Reason: keypool.Reason(reason)}, seq: s}, true
}
