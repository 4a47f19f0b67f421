package redisstate

import "github.com/redis/go-redis/v9"

// The scripts run atomically in Redis: a mark is one round trip that cannot lose
// a concurrent longer mark. Every key a script touches is passed in KEYS and
// carries the pool's hash tag, as Redis Cluster requires.

// luaCommon defines the helpers every script shares. A key's state is the string
// "untilMs seq markMs overrideMs reason": the deadline (0: available), the change
// that set it, when the mark that decided the deadline was made and when an
// operator last replaced the state (0: never), by the clocks of the replicas
// that did it.
//
// next_seq numbers a change of the pool: the Redis clock in microseconds, or one
// more than the last number if that is later. A clock rather than a counter keeps
// the numbers growing across a restart or a failover to a replica that missed
// the last writes, so replicas never take a new change for an old one.
//
// write stores a state, with TTL = remaining cooldown (a tombstone of
// tombstone_ms for an available key), indexes it, and publishes the change.
//
// merge applies a mark made at mark that never shortens: the cooldown in force
// is the later of the stored one and the new one; only a later deadline is
// written. replace applies an operator's action made at at. Both order changes
// by when they were made, not by when they reach Redis, which differ for a call
// that timed out but still lands, or for what a replica pushes after an outage:
// a mark made before the last operator action is dropped; an action made before
// the last one is dropped; a mark made after an action keeps its deadline when
// the action arrives (the later deadline wins).
const luaCommon = `
local function next_seq(meta)
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('HGET', meta, 'seq') or '0')
  local seq = string.format('%.0f', math.max(last + 1, now_us))
  redis.call('HSET', meta, 'seq', seq)
  return seq
end

local function current(cd)
  local v = redis.call('GET', cd)
  if not v then return nil end
  local u, s, m, o, r = string.match(v, '^(%d+) (%d+) (%d+) (%d+) (.*)$')
  if not u then return nil end
  return {until_ms = tonumber(u), seq = s, mark = tonumber(m), override = tonumber(o), reason = r}
end

local function reply(st)
  if not st then return {'0', '0', '0', ''} end
  return {string.format('%.0f', st.until_ms), st.seq, string.format('%.0f', st.mark), st.reason}
end

local function write(meta, cd, idx, ref, until_ms, reason, mark, override, now, tombstone_ms, channel, pool)
  local seq = next_seq(meta)
  local u = string.format('%.0f', until_ms)
  local m = string.format('%.0f', mark)
  local value = u .. ' ' .. seq .. ' ' .. m .. ' ' .. string.format('%.0f', override) .. ' ' .. reason
  if until_ms > now then
    local ttl = until_ms - now
    redis.call('SET', cd, value, 'PX', ttl)
    redis.call('ZADD', idx, until_ms, ref)
    redis.call('ZREMRANGEBYSCORE', idx, '-inf', now)
    if redis.call('PTTL', idx) < ttl then redis.call('PEXPIRE', idx, ttl) end
  else
    u, reason = '0', ''
    redis.call('SET', cd, '0 ' .. seq .. ' ' .. m .. ' ' .. string.format('%.0f', override) .. ' ', 'PX', tombstone_ms)
    redis.call('ZREM', idx, ref)
  end
  redis.call('PUBLISH', channel, cjson.encode({p = pool, r = ref, u = u, s = seq, a = m, c = reason}))
  return {until_ms = tonumber(u), seq = seq, mark = mark, override = override, reason = reason}
end

local function merge(meta, cd, idx, ref, until_ms, reason, mark, now, tombstone_ms, channel, pool)
  local cur = current(cd)
  if cur and cur.override > mark then return cur end
  if cur and cur.until_ms >= until_ms then return cur end
  if until_ms <= now then return cur end
  local override = 0
  if cur then override = cur.override end
  return write(meta, cd, idx, ref, until_ms, reason, mark, override, now, tombstone_ms, channel, pool)
end

local function replace(meta, cd, idx, ref, until_ms, reason, at, now, tombstone_ms, channel, pool)
  local cur = current(cd)
  if cur and cur.override > at then return cur end
  local mark = at
  if cur and cur.mark > at and cur.until_ms > until_ms and cur.until_ms > now then
    until_ms, reason, mark = cur.until_ms, cur.reason, cur.mark
  end
  return write(meta, cd, idx, ref, until_ms, reason, mark, at, now, tombstone_ms, channel, pool)
end
`

// markLua records a failure: the cooldown (never shortened) and, when KEYS[4]
// is given, the request's tried key.
//
//	KEYS: meta, cooldown, index[, tried]
//	ARGV: untilMs, reason, nowMs, requestTTLms, channel, pool, ref, tombstoneMs
//	reply: {untilMs, seq, markMs, reason} of the state in force
const markLua = luaCommon + `
local now = tonumber(ARGV[3])
local st = merge(KEYS[1], KEYS[2], KEYS[3], ARGV[7], tonumber(ARGV[1]), ARGV[2], now, now, tonumber(ARGV[8]), ARGV[5], ARGV[6])
if KEYS[4] then
  redis.call('SADD', KEYS[4], ARGV[7])
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
return reply(st)
`

// overrideLua replaces a key's state, shorter or not (an operator's action).
// An untilMs not after nowMs makes the key available and leaves a tombstone.
//
//	KEYS: meta, cooldown, index
//	ARGV: untilMs, reason, nowMs, channel, pool, ref, tombstoneMs
//	reply: {untilMs, seq, markMs, reason} of the new state ("0" when available)
const overrideLua = luaCommon + `
local now = tonumber(ARGV[3])
return reply(replace(KEYS[1], KEYS[2], KEYS[3], ARGV[6], tonumber(ARGV[1]), ARGV[2], now, now, tonumber(ARGV[7]), ARGV[4], ARGV[5]))
`

// syncLua is a replica's resync of one pool: it pushes what the replica knows
// that Redis may lack, then reads the state of every key it was given. Per key,
// by mode:
//
//   - "r": read only.
//
//   - "v": a mark Redis confirmed to the replica (seq): Redis lost it when it
//     holds nothing for the key or an older change; merged back, never shortening.
//
//   - "p": a mark made while Redis was unreachable, at markMs: merged, unless an
//     operator replaced the key's state after it.
//
//   - "o": an operator's action made while Redis was unreachable, at markMs:
//     replaces the state unless a later action did; a mark made after it stays
//     (the later deadline wins).
//
//     KEYS: meta, index, cooldown_1..cooldown_n
//     ARGV: nowMs, channel, pool, tombstoneMs, then per cooldown_i:
//     ref, mode, untilMs, reason, markMs, seq
//     reply: {pushed, {state_1..state_n}} where state_i is the stored string or false
const syncLua = luaCommon + `
local now, channel, pool, tomb = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local pushed = 0
for i = 3, #KEYS do
  local a = 5 + (i - 3) * 6
  local ref, mode, until_ms, reason, at, seq = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local cur = current(KEYS[i])
  if mode == 'v' then
    if not cur or tonumber(cur.seq) < seq then
      merge(KEYS[1], KEYS[i], KEYS[2], ref, until_ms, reason, at, now, tomb, channel, pool)
      pushed = pushed + 1
    end
  elseif mode == 'p' then
    merge(KEYS[1], KEYS[i], KEYS[2], ref, until_ms, reason, at, now, tomb, channel, pool)
    pushed = pushed + 1
  elseif mode == 'o' then
    replace(KEYS[1], KEYS[i], KEYS[2], ref, until_ms, reason, at, now, tomb, channel, pool)
    pushed = pushed + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local states = {}
for i = 3, #KEYS do states[i - 2] = redis.call('GET', KEYS[i]) end
return {pushed, states}
`

// scriptSet holds the scripts of one State. They are loaded into Redis on every
// (re)synchronisation, so the request path's EVALSHA finds them even in a Redis
// that came back empty.
type scriptSet struct {
	mark, override, sync *redis.Script
}

func newScriptSet() scriptSet {
	return scriptSet{
		mark:     redis.NewScript(markLua),
		override: redis.NewScript(overrideLua),
		sync:     redis.NewScript(syncLua),
	}
}

func (s scriptSet) all() []*redis.Script { return []*redis.Script{s.mark, s.override, s.sync} }
