package redisstate

import "github.com/redis/go-redis/v9"

// The scripts run atomically in Redis: a mark is one round trip that cannot lose
// a concurrent longer mark. Every key a script touches is passed in KEYS and
// carries the pool's hash tag, as Redis Cluster requires.

// luaCommon defines the helpers every script shares.
//
// epoch_of returns the pool's epoch, creating it (and reporting so) when Redis
// has none: a Redis that lost its data gets a new epoch.
//
// next_seq numbers a change of the pool: the Redis clock in microseconds, or one
// more than the last number if that is later. A clock rather than a counter keeps
// the numbers growing across a failover to a replica that missed the last writes,
// so replicas never take a new change for an old one.
//
// store writes a cooldown "untilMs seq reason" with TTL = remaining cooldown,
// indexes it, and publishes the change.
//
// merge applies a mark that never shortens: the cooldown in force is the later of
// the stored one and the new one; only a later deadline is written.
const luaCommon = `
local function epoch_of(meta, fresh)
  local e = redis.call('HGET', meta, 'epoch')
  if e then return e, false end
  redis.call('HSET', meta, 'epoch', fresh)
  return fresh, true
end

local function next_seq(meta)
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('HGET', meta, 'seq') or '0')
  local seq = string.format('%.0f', math.max(last + 1, now_us))
  redis.call('HSET', meta, 'seq', seq)
  return seq
end

local function store(meta, cd, idx, ref, until_s, until_ms, reason, now, channel, pool, epoch)
  local seq = next_seq(meta)
  local ttl = until_ms - now
  redis.call('SET', cd, until_s .. ' ' .. seq .. ' ' .. reason, 'PX', ttl)
  redis.call('ZADD', idx, until_ms, ref)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', now)
  if redis.call('PTTL', idx) < ttl then redis.call('PEXPIRE', idx, ttl) end
  redis.call('PUBLISH', channel, cjson.encode({p = pool, r = ref, u = until_s, s = seq, c = reason, e = epoch}))
  return {until_s, seq, reason}
end

local function current(cd)
  local v = redis.call('GET', cd)
  if not v then return nil end
  local u, s, r = string.match(v, '^(%d+) (%d+) (.*)$')
  if not u then return nil end
  return {u, s, r}
end

local function merge(meta, cd, idx, ref, until_s, reason, now, channel, pool, epoch)
  local until_ms = tonumber(until_s)
  local cur = current(cd)
  if cur and tonumber(cur[1]) >= until_ms then return cur end
  if until_ms <= now then return cur or {'0', '0', ''} end
  return store(meta, cd, idx, ref, until_s, until_ms, reason, now, channel, pool, epoch)
end
`

// markLua records a failure: the cooldown (never shortened) and, when KEYS[4]
// is given, the request's tried key.
//
//	KEYS: meta, cooldown, index[, tried]
//	ARGV: untilMs, reason, nowMs, requestTTLms, channel, pool, ref, freshEpoch
//	reply: {untilMs, seq, reason, epoch} of the cooldown in force
const markLua = luaCommon + `
local epoch = epoch_of(KEYS[1], ARGV[8])
local res = merge(KEYS[1], KEYS[2], KEYS[3], ARGV[7], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5], ARGV[6], epoch)
if KEYS[4] then
  redis.call('SADD', KEYS[4], ARGV[7])
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
res[4] = epoch
return res
`

// overrideLua replaces a key's state, shorter or not (an operator's action).
// An untilMs not after nowMs makes the key available.
//
//	KEYS: meta, cooldown, index
//	ARGV: untilMs, reason, nowMs, channel, pool, ref, freshEpoch
//	reply: {untilMs, seq, reason, epoch} of the new state ("0" when available)
const overrideLua = luaCommon + `
local epoch = epoch_of(KEYS[1], ARGV[7])
local until_ms, now = tonumber(ARGV[1]), tonumber(ARGV[3])
if until_ms > now then
  local res = store(KEYS[1], KEYS[2], KEYS[3], ARGV[6], ARGV[1], until_ms, ARGV[2], now, ARGV[4], ARGV[5], epoch)
  res[4] = epoch
  return res
end
local seq = next_seq(KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('PUBLISH', ARGV[4], cjson.encode({p = ARGV[5], r = ARGV[6], u = '0', s = seq, c = '', e = epoch}))
return {'0', seq, '', epoch}
`

// syncLua is a replica's resync of one pool. It pushes the replica's marks
// that Redis may not hold (never shortening), then lists the pool's cooldowns.
// Marks of mode "p" (made while Redis was unreachable) are always pushed; marks of
// mode "v" (this replica's view) only when Redis lost the pool's state: a new
// epoch, or the replica's last known epoch differs.
//
//	KEYS: meta, index, cooldown_1..cooldown_n
//	ARGV: nowMs, knownEpoch, freshEpoch, channel, pool, then per cooldown_i:
//	      ref, untilMs, reason, mode
//	reply: {epoch, lost (0|1), seq, pushed, {refs of the index}}
const syncLua = luaCommon + `
local now = tonumber(ARGV[1])
local epoch, created = epoch_of(KEYS[1], ARGV[3])
local lost = created or (ARGV[2] ~= '' and ARGV[2] ~= epoch)
local pushed = 0
for i = 3, #KEYS do
  local a = 6 + (i - 3) * 4
  if lost or ARGV[a + 3] == 'p' then
    merge(KEYS[1], KEYS[i], KEYS[2], ARGV[a], ARGV[a + 1], ARGV[a + 2], now, ARGV[4], ARGV[5], epoch)
    pushed = pushed + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
return {epoch, lost and 1 or 0, seq, pushed, redis.call('ZRANGE', KEYS[2], 0, -1)}
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
