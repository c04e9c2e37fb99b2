-- grant.lua: lease the free key whose work is stalest to one worker.
--
-- KEYS[1] meta    hash   {size, lease_ms, fresh, created_us}
-- KEYS[2] free    zset   key -> staleness score of touched keys that are free (see below)
-- KEYS[3] held    zset   key -> expires_us of keys under lease
-- KEYS[4] leases  hash   key -> "token[:holder]|started_us|expires_us|lease_ms|last|machine"
-- KEYS[5] tokens  hash   token -> key, for the leases that are live
-- KEYS[6] fence   string the process name's last fencing token (never deleted)
-- KEYS[7] events  stream (optional) the process's history; each change appends one entry
-- ARGV[1] machine   any string of 1 to 1024 bytes, stored as given
-- ARGV[2] lease_ms  lease length in milliseconds, 0 to 86400000; 0 takes the process's default
-- ARGV[3] events_cap  (optional, default 10000) entries the stream keeps, 1 to 10000000
-- ARGV[4] holder    (optional, default '') who may renew and release the lease: up to 64 hex
--                   digits (the API passes its token's id); '' for trusted direct workers
--
-- Returns {0, key, token, started_us, expires_us, last, size, lease_ms, reclaimed}  granted;
--            reclaimed = expired leases this call returned to the free set
--         {1}                       no such process
--         {3, retry_after_us}       no key free; microseconds until the earliest lease expires
--         {6, argument}             an argument is missing, malformed or out of range;
--                                   nothing changed
--
-- Times are microseconds since the epoch from Redis TIME. `last` is the staleness score:
-- the microsecond of the key's last completion, or (key - size) < 0 if it never completed,
-- so never-completed keys sort first, lowest number first. Keys >= `fresh` were never
-- touched; they are not stored, and the next of them has score (fresh - size).
-- Fencing tokens are max(last token + 1, microseconds since 2026-01-01 by Redis TIME): they
-- strictly increase on one server, and after a failover that lost the newest grants
-- (replication is asynchronous) the promoted replica still hands out tokens above every token
-- the old primary gave, unless its clock is behind by more than the failover took.
-- Cost: O(log size) plus at most RECLAIM_LIMIT expired leases returned to the free set.
local meta, free, held, leases, tokens, fence = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local events = KEYS[7]
local machine = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local events_cap = tonumber(ARGV[3] or '10000')
local holder = ARGV[4] or ''
local RECLAIM_LIMIT = 16
local TOKEN_EPOCH_US = 1767225600000000
-- The bounds of coordinator/validation.py, for callers that skip it (tests tie the two).
local LEASE_MS_MAX = 86400000
local EVENTS_CAP_MAX = 10000000
local MACHINE_BYTES_MAX = 1024
local HOLDER_MAX = 64

if not machine or machine == '' or #machine > MACHINE_BYTES_MAX then
  return {6, 'machine'}
end
if not lease_ms or lease_ms < 0 or lease_ms > LEASE_MS_MAX or lease_ms ~= math.floor(lease_ms) then
  return {6, 'lease_ms'}
end
if not events_cap or events_cap < 1 or events_cap > EVENTS_CAP_MAX
    or events_cap ~= math.floor(events_cap) then
  return {6, 'events_cap'}
end
if #holder > HOLDER_MAX or not string.match(holder, '^%x*$') then
  return {6, 'holder'}
end

-- Appends one entry to the history, when the caller passed the stream (older callers don't).
local function record(kind, key, token, machine, at_us)
  if events then
    redis.call('XADD', events, 'MAXLEN', '~', string.format('%d', events_cap), '*', 'type', kind,
      'key', key, 'token', token, 'machine', machine, 'at_us', string.format('%.0f', at_us))
  end
end

local m = redis.call('HMGET', meta, 'size', 'lease_ms', 'fresh')
if not m[1] then
  return {1}
end
local size, fresh = tonumber(m[1]), tonumber(m[3])
if lease_ms == 0 then
  lease_ms = tonumber(m[2])
end

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- An expired lease is free: put it back where its staleness says, no background job needed.
-- A record that is missing or unreadable (never written by these scripts) cannot name its
-- token or completion: the key goes back as never completed rather than stay held forever.
local expired = redis.call('ZRANGEBYSCORE', held, '-inf', string.format('%.0f', now_us),
  'LIMIT', 0, RECLAIM_LIMIT)
for _, key in ipairs(expired) do
  local token, last, machine_then = string.match(redis.call('HGET', leases, key) or '',
    '^(%d+):?%x*|%d+|%d+|%d+|(-?%d+)|(.*)$')
  if token then
    redis.call('HDEL', tokens, token)
  else
    token, last, machine_then = '', string.format('%d', (tonumber(key) or 0) - size), ''
  end
  redis.call('HDEL', leases, key)
  redis.call('ZREM', held, key)
  if tonumber(key) then
    redis.call('ZADD', free, last, key)
  end
  record('expired', key, token, machine_then, now_us)
end

local key, last
local stalest = redis.call('ZRANGE', free, 0, 0, 'WITHSCORES')
if fresh < size and (stalest[1] == nil or tonumber(stalest[2]) > fresh - size) then
  key, last = fresh, fresh - size
  redis.call('HINCRBY', meta, 'fresh', 1)
elseif stalest[1] then
  key, last = tonumber(stalest[1]), tonumber(stalest[2])
  redis.call('ZREM', free, stalest[1])
else
  -- Nothing held either can only be a damaged process (keys removed behind our back):
  -- answer busy for a second rather than fail.
  local earliest = redis.call('ZRANGE', held, 0, 0, 'WITHSCORES')
  return {3, earliest[2] and tonumber(earliest[2]) - now_us or 1000000}
end

-- Numbers go to Redis as formatted strings: Lua's own conversion may print 1.7e+15.
local name = string.format('%d', key)
local token = math.max(tonumber(redis.call('GET', fence) or '0') + 1, now_us - TOKEN_EPOCH_US)
local token_text = string.format('%.0f', token)
redis.call('SET', fence, token_text)
local expires_us = now_us + lease_ms * 1000
local owner = holder == '' and token_text or token_text .. ':' .. holder
redis.call('HSET', leases, name, string.format('%s|%.0f|%.0f|%d|%.0f|', owner, now_us,
  expires_us, lease_ms, last) .. machine)
redis.call('HSET', tokens, token_text, name)
redis.call('ZADD', held, string.format('%.0f', expires_us), name)
record('granted', name, token_text, machine, now_us)
return {0, key, token, now_us, expires_us, last, size, lease_ms, #expired}
