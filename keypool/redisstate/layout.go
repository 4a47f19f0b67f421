package redisstate

import (
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

// meta is a hash {seq}: seq numbers the pool's changes, strictly increasing, from
// the Redis clock in microseconds so that it keeps growing across a restart or a
// failover. It has no TTL: one small hash per pool.
func (l layout) meta(pool string) string { return l.tag(pool) + ":meta" }

// key is a hash holding every scope of one key: v (the version: the seq of its
// last change), o (when an operator last acted on the key, unix ms), and one
// field per scope with state, "s:" for the key-wide scope and "s:<model>" for a
// model, each "untilMs markMs spanMs probeUntilMs holder reason" (see
// scopeState). It expires when its last scope retires; after an operator's
// enable, which clears every scope, it stays tombstoneTTL with only v and o, so
// that a mark from before the enable, pushed back by a replica after an outage,
// cannot undo it.
func (l layout) key(pool, ref string) string { return l.tag(pool) + ":k:" + ref }

// index is a sorted set ref → unix ms when the key's last scope retires, so a
// resync finds the keys with state without scanning; it expires with its last
// key.
func (l layout) index(pool string) string { return l.tag(pool) + ":idx" }

// tried is the set of refs a request failed with, named by the request's
// keypool.RequestKey; it expires the tried TTL after the request's last failure,
// or is deleted when the request ends.
func (l layout) tried(pool, requestID string) string {
	return l.tag(pool) + ":t:" + keypool.RequestKey(requestID)
}

// window is the sorted set of the requests (RequestKeys, scored by unix ms) that
// saw a failure class on a scope within the corroboration window.
func (l layout) window(pool string, scope keypool.Scope, class keypool.Class) string {
	return l.tag(pool) + ":c:" + scope.Ref + "|" + scope.Model + "|" + string(class)
}

// channel carries one message per change of a key's state.
func (l layout) channel() string { return l.prefix + "changes" }

// tombstoneTTL is how long Redis remembers an operator's enable: a replica cut
// off for longer than this could bring back a cooldown set before the enable.
const tombstoneTTL = 24 * time.Hour

// keyWideModel names the key-wide scope in messages ("*" is outside the model
// name alphabet of keypool.ModelName).
const keyWideModel = "*"

// scopeState is one scope of a key as Redis holds it.
type scopeState struct {
	e keypool.Entry
	// at is when (unix ms, by the clock of the replica that made it) the mark or
	// action that set the deadline was made.
	at int64
	// holder is the probe lease's holder; "" when none.
	holder string
}

// keyState is a key's state as Redis holds it, or as a message carries it,
// less o (when an operator last acted on the key): the scripts order changes
// by it; the view has no use for it.
type keyState struct {
	v      int64 // version: the seq of the key's last change
	scopes map[string]scopeState
}

// parseKeyState reads a key state as the scripts write it in replies and
// messages: "pool ref v o" then one line per scope,
// "model untilMs markMs spanMs probeUntilMs holder reason" ("*" the key-wide
// model, "-" an absent holder or reason).
func parseKeyState(msg string) (pool, ref string, ks keyState, ok bool) {
	head, rest, _ := strings.Cut(msg, "\n")
	f := strings.Fields(head)
	if len(f) != 4 {
		return "", "", ks, false
	}
	v, err1 := strconv.ParseInt(f[2], 10, 64)
	_, err2 := strconv.ParseInt(f[3], 10, 64) // o: read only to reject a malformed message
	if err1 != nil || err2 != nil || f[0] == "" || f[1] == "" {
		return "", "", ks, false
	}
	ks = keyState{v: v, scopes: map[string]scopeState{}}
	for line := range strings.SplitSeq(rest, "\n") {
		if line == "" {
			continue
		}
		g := strings.Fields(line)
		if len(g) != 7 {
			return "", "", ks, false
		}
		var n [4]int64
		for i := range n {
			var err error
			if n[i], err = strconv.ParseInt(g[1+i], 10, 64); err != nil {
				return "", "", ks, false
			}
		}
		model := g[0]
		if model == keyWideModel {
			model = ""
		}
		s := scopeState{at: n[1], e: keypool.Entry{
			Cooldown:   keypool.Cooldown{Until: fromUnixMillis(n[0]), Reason: keypool.Reason(dash(g[6]))},
			Span:       time.Duration(n[2]) * time.Millisecond,
			ProbeUntil: fromUnixMillis(n[3]),
		}, holder: dash(g[5])}
		ks.scopes[model] = s
	}
	return f[0], f[1], ks, true
}

func dash(s string) string {
	if s == "-" {
		return ""
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
