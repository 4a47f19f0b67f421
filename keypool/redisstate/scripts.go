package redisstate

import (
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// The scripts run atomically in Redis: every write of the request path is one
// script, one round trip, that cannot lose a concurrent write. Every key a
// script touches is passed in KEYS and carries the pool's hash tag, as Redis
// Cluster requires, so no script can fail with CROSSSLOT.

// luaCommon defines what every script shares. A key's state is the hash the
// layout's key describes; load reads it (dropping the scopes that retired),
// save writes it whole with a new version, sets its TTL and index entry, and
// publishes it.
//
// next_seq numbers a change of the pool: the Redis clock in microseconds, or one
// more than the last number if that is later. A clock rather than a counter keeps
// the numbers growing across a restart or a failover to a replica that missed
// the last writes, so replicas never take a new change for an old one.
//
// mark applies a mark made at `at` (unix ms): the later deadline wins, a mark
// that lengthens the cooldown stores its reason and span and ends the probe
// lease. override applies an operator's action made at `at`. Both order changes
// by when they were made, not by when they reach Redis, which differ for a call
// that timed out but still lands, or for what a replica pushes after an outage:
// a mark made before the key's last operator action is dropped, and so is an
// action made before the last one; a mark made after an action keeps its
// deadline when the action arrives late.
var luaCommon = `
local MIN_PROBE = ` + strconv.FormatInt(keypool.MinProbeWindow.Milliseconds(), 10) + `

local function fmt(n) return string.format('%.0f', n) end

local function next_seq(meta)
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('HGET', meta, 'seq') or '0')
  local seq = math.max(last + 1, now_us)
  redis.call('HSET', meta, 'seq', fmt(seq))
  return seq
end

local function retires(sc) return sc.u + math.max(sc.sp, MIN_PROBE) end

local function load(k, now)
  local h = redis.call('HGETALL', k)
  local st = {v = 0, o = 0, scopes = {}, exists = #h > 0}
  for i = 1, #h, 2 do
    local f, val = h[i], h[i + 1]
    if f == 'v' then st.v = tonumber(val)
    elseif f == 'o' then st.o = tonumber(val)
    elseif string.sub(f, 1, 2) == 's:' then
      local u, m, sp, pu, hd, r = string.match(val, '^(%d+) (%d+) (%d+) (%d+) (%S+) (%S+)$')
      if u then
        local sc = {u = tonumber(u), m = tonumber(m), sp = tonumber(sp), pu = tonumber(pu), h = hd, r = r}
        if now < retires(sc) then st.scopes[string.sub(f, 3)] = sc end
      end
    end
  end
  return st
end

local function scope_line(sc)
  return fmt(sc.u) .. ' ' .. fmt(sc.m) .. ' ' .. fmt(sc.sp) .. ' ' .. fmt(sc.pu) .. ' ' .. sc.h .. ' ' .. sc.r
end

local function serialize(pool, ref, st)
  local out = {pool .. ' ' .. ref .. ' ' .. fmt(st.v) .. ' ' .. fmt(st.o)}
  for model, sc in pairs(st.scopes) do
    local name = model
    if name == '' then name = '*' end
    out[#out + 1] = name .. ' ' .. scope_line(sc)
  end
  return table.concat(out, '\n')
end

local function save(meta, k, idx, ref, st, now, tomb, channel, pool)
  st.v = next_seq(meta)
  redis.call('DEL', k)
  local args = {'v', fmt(st.v)}
  if st.o > 0 then
    args[#args + 1] = 'o'
    args[#args + 1] = fmt(st.o)
  end
  local retire = 0
  for model, sc in pairs(st.scopes) do
    args[#args + 1] = 's:' .. model
    args[#args + 1] = scope_line(sc)
    retire = math.max(retire, retires(sc))
  end
  redis.call('HSET', k, unpack(args))
  if retire > now then
    redis.call('PEXPIRE', k, retire - now)
    redis.call('ZADD', idx, retire, ref)
    if redis.call('PTTL', idx) < retire - now then redis.call('PEXPIRE', idx, retire - now) end
  else
    redis.call('PEXPIRE', k, tomb)
    redis.call('ZREM', idx, ref)
  end
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', now)
  local msg = serialize(pool, ref, st)
  redis.call('PUBLISH', channel, msg)
  return msg
end

local function mark(st, model, u, sp, r, at, now)
  if st.o > at then return false end
  local cur = st.scopes[model]
  if u <= now or (cur and u <= cur.u) then return false end
  st.scopes[model] = {u = u, m = at, sp = sp, pu = 0, h = '-', r = r}
  return true
end

local function override(st, u, r, at, now)
  if st.o > at then return false end
  if u > now then
    local cur = st.scopes['']
    if not (cur and cur.m > at and cur.u > u) then
      st.scopes[''] = {u = u, m = at, sp = u - at, pu = 0, h = '-', r = r}
    end
  else
    for model, sc in pairs(st.scopes) do
      if not (sc.m > at and sc.u > now) then st.scopes[model] = nil end
    end
  end
  st.o = at
  return true
end

local function record_tried(tried, ref, ttl)
  if not tried then return {} end
  redis.call('SADD', tried, ref)
  redis.call('PEXPIRE', tried, ttl)
  return redis.call('SMEMBERS', tried)
end

local function state_of(pool, ref, st)
  if not st.exists then return false end
  return serialize(pool, ref, st)
end
`

// markLua records a failure: the scope's cooldown (never shortened) and, when
// KEYS[4] is given, the request's tried key.
//
//	KEYS: meta, key, index[, tried]
//	ARGV: model, untilMs, spanMs, reason, nowMs, channel, pool, ref, triedTTLms, tombstoneMs
//	reply: {changed 0|1, key state, tried refs}
var markLua = luaCommon + `
local now = tonumber(ARGV[5])
local st = load(KEYS[2], now)
local msg
local changed = mark(st, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], now, now)
if changed then
  msg = save(KEYS[1], KEYS[2], KEYS[3], ARGV[8], st, now, tonumber(ARGV[10]), ARGV[6], ARGV[7])
else
  msg = serialize(ARGV[7], ARGV[8], st)
end
return {changed and 1 or 0, msg, record_tried(KEYS[4], ARGV[8], ARGV[9])}
`

// corroborateLua counts the distinct requests that saw a failure class on a
// scope within the window, and marks the scope when a quorum agrees (the next
// cooldown then needs a quorum of its own).
//
//	KEYS: meta, key, index, window[, tried]
//	ARGV: model, untilMs, spanMs, reason, nowMs, channel, pool, ref, triedTTLms,
//	      tombstoneMs, member, windowMs, quorum
//	reply: {changed 0|1, key state, tried refs, agreeing}
var corroborateLua = luaCommon + `
local now, window, quorum = tonumber(ARGV[5]), tonumber(ARGV[12]), tonumber(ARGV[13])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
redis.call('ZADD', KEYS[4], now, ARGV[11])
local agreeing = redis.call('ZCARD', KEYS[4])
local st = load(KEYS[2], now)
local changed = false
if agreeing >= quorum then
  changed = mark(st, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], now, now)
  redis.call('DEL', KEYS[4])
else
  redis.call('PEXPIRE', KEYS[4], window)
end
local msg
if changed then
  msg = save(KEYS[1], KEYS[2], KEYS[3], ARGV[8], st, now, tonumber(ARGV[10]), ARGV[6], ARGV[7])
else
  msg = serialize(ARGV[7], ARGV[8], st)
end
return {changed and 1 or 0, msg, record_tried(KEYS[5], ARGV[8], ARGV[9]), agreeing}
`

// triedLua records a key tried by a request without cooling anything.
//
//	KEYS: tried
//	ARGV: ref, triedTTLms
//	reply: tried refs
var triedLua = luaCommon + `
return record_tried(KEYS[1], ARGV[1], ARGV[2])
`

// acquireLua grants the probe lease of a scope whose cooldown ended, unless
// another holder's lease is unexpired.
//
//	KEYS: meta, key, index
//	ARGV: model, nowMs, leaseTTLms, holder, channel, pool, ref, tombstoneMs
//	reply: {grant (1 granted, 2 busy, 3 not needed, 4 cooling), key state}
var acquireLua = luaCommon + `
local now = tonumber(ARGV[2])
local st = load(KEYS[2], now)
local sc = st.scopes[ARGV[1]]
if not sc then return {3, serialize(ARGV[6], ARGV[7], st)} end
if now < sc.u then return {4, serialize(ARGV[6], ARGV[7], st)} end
if now < sc.pu then return {2, serialize(ARGV[6], ARGV[7], st)} end
sc.pu, sc.h = now + tonumber(ARGV[3]), ARGV[4]
return {1, save(KEYS[1], KEYS[2], KEYS[3], ARGV[7], st, now, tonumber(ARGV[8]), ARGV[5], ARGV[6])}
`

// endProbeLua ends a holder's probe lease: "s" (succeeded) removes the scope
// unless a newer mark cools it, "r" (released) only frees the lease.
//
//	KEYS: meta, key, index
//	ARGV: model, nowMs, holder, end, channel, pool, ref, tombstoneMs
//	reply: {acted 0|1, key state}
var endProbeLua = luaCommon + `
local now = tonumber(ARGV[2])
local st = load(KEYS[2], now)
local sc = st.scopes[ARGV[1]]
if not sc or sc.h ~= ARGV[3] then return {0, serialize(ARGV[6], ARGV[7], st)} end
if ARGV[4] == 's' and now >= sc.u then
  st.scopes[ARGV[1]] = nil
else
  sc.pu, sc.h = 0, '-'
end
return {1, save(KEYS[1], KEYS[2], KEYS[3], ARGV[7], st, now, tonumber(ARGV[8]), ARGV[5], ARGV[6])}
`

// overrideLua is an operator's action: an untilMs after nowMs replaces the
// key-wide scope (disable); otherwise every scope of the key is cleared
// (enable), leaving a tombstone.
//
//	KEYS: meta, key, index
//	ARGV: untilMs, reason, atMs, nowMs, channel, pool, ref, tombstoneMs
//	reply: {applied 0|1, key state}
var overrideLua = luaCommon + `
local now = tonumber(ARGV[4])
local st = load(KEYS[2], now)
if not override(st, tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), now) then
  return {0, serialize(ARGV[6], ARGV[7], st)}
end
return {1, save(KEYS[1], KEYS[2], KEYS[3], ARGV[7], st, now, tonumber(ARGV[8]), ARGV[5], ARGV[6])}
`

// syncLua is a replica's resync of one pool: per key, it pushes what the
// replica knows that Redis may lack, then returns the key's state.
//
//   - An operator's action made while Redis was unreachable (ovAt > 0) is
//     applied as override orders it.
//   - Mode "p": the scopes given are marks made while Redis was unreachable.
//   - Mode "v": the scopes given are what Redis confirmed to the replica up to
//     version vk; when Redis holds an older version (nothing at all after a
//     restart without persistence, or a failover to a replica that missed the
//     writes), Redis lost them and they are merged back.
//   - Mode "r": read only.
//
// Marks merge as mark orders them: never shortening, never undoing a later
// operator action.
//
//	KEYS: meta, index, key_1..key_n
//	ARGV: nowMs, channel, pool, tombstoneMs, then per key: ref, vk, ovAt,
//	      ovUntilMs, ovReason, mode, n, then n times: model, untilMs, markMs,
//	      spanMs, reason
//	reply: {pushed, {state_1..state_n}, seq} where state_i is a key state or
//	false, and seq the pool's seq after the pushes ("0" when it has none)
var syncLua = luaCommon + `
local now, channel, pool, tomb = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local a, pushed, states = 5, 0, {}
for i = 3, #KEYS do
  local ref, vk, ov_at, ov_u, ov_r, mode, n = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), ARGV[a + 4], ARGV[a + 5], tonumber(ARGV[a + 6])
  a = a + 7
  local st = load(KEYS[i], now)
  local changed = false
  if ov_at > 0 and override(st, ov_u, ov_r, ov_at, now) then changed = true end
  local merge = mode == 'p' or (mode == 'v' and st.v < vk)
  for j = 1, n do
    if merge and mark(st, ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3]), ARGV[a + 4], tonumber(ARGV[a + 2]), now) then
      changed = true
    end
    a = a + 5
  end
  if changed then
    pushed = pushed + 1
    states[i - 2] = save(KEYS[1], KEYS[i], KEYS[2], ref, st, now, tomb, channel, pool)
  else
    states[i - 2] = state_of(pool, ref, st)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return {pushed, states, redis.call('HGET', KEYS[1], 'seq') or '0'}
`

// scriptSet holds the scripts of one State. They are loaded into Redis on every
// (re)synchronisation, so the request path's EVALSHA finds them even in a Redis
// that came back empty.
type scriptSet struct {
	mark, corroborate, tried, acquire, endProbe, override, sync *redis.Script
}

// sources are the scripts' texts, for SCRIPT LOAD.
func (scriptSet) sources() []string {
	return []string{markLua, corroborateLua, triedLua, acquireLua, endProbeLua, overrideLua, syncLua}
}

func newScriptSet() scriptSet {
	return scriptSet{
		mark:        redis.NewScript(markLua),
		corroborate: redis.NewScript(corroborateLua),
		tried:       redis.NewScript(triedLua),
		acquire:     redis.NewScript(acquireLua),
		endProbe:    redis.NewScript(endProbeLua),
		override:    redis.NewScript(overrideLua),
		sync:        redis.NewScript(syncLua),
	}
}
