-- retry_key.lua: give one key another chance (an administrator's act): lift its quarantine
-- and backoff and reset its attempts. A key of a completed `once` pass reopens the pass until
-- the key is done or quarantined again (a redrive of the failed slice).
--
-- KEYS[1] meta    hash   the process: size, fresh, pass_completed_us, qdone, epoch, ...
-- KEYS[2] free    zset   key -> staleness score; the key returns here if parked
-- KEYS[3] keyinfo hash   a:<key> "epoch:attempts", l:<key> the score of a parked key
-- KEYS[4] parked  zset   keys in backoff -> retry_at_us; quarantined -> +inf
-- KEYS[5] events  stream (optional) the process's history
-- ARGV[1] key     the key number, 0 to size - 1
-- ARGV[2] events_cap  (optional, default 10000) entries the stream keeps, 1 to 10000000
--
-- Returns {0, was}  done; `was` is the key's state before: quarantined, backoff or other
--         {1}  no such process
--         {6, argument}  an argument is malformed or out of range; nothing changed
--         {10} the key is outside the key space
local meta, free, keyinfo, parked, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local key = tonumber(ARGV[1])
local events_cap = tonumber(ARGV[2] or '10000')
local EVENTS_CAP_MAX = 10000000
if not key or key ~= math.floor(key) or not string.match(ARGV[1], '^%d+$') then
  return {6, 'key'}
end
if not events_cap or events_cap < 1 or events_cap > EVENTS_CAP_MAX
    or events_cap ~= math.floor(events_cap) then
  return {6, 'events_cap'}
end
local m = redis.call('HMGET', meta, 'size', 'pass_started_us')
if not m[1] then
  return {1}
end
if key >= tonumber(m[1]) then
  return {10}
end
local name = string.format('%d', key)
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

local was = 'other'
local until_us = redis.call('ZSCORE', parked, name)
if until_us then
  local last = redis.call('HGET', keyinfo, 'l:' .. name) or '0'
  if tonumber(until_us) == math.huge or until_us == 'inf' then
    was = 'quarantined'
    if tonumber(last) > tonumber(m[2] or '0') then
      redis.call('HINCRBY', meta, 'qdone', -1)
    end
  else
    was = 'backoff'
  end
  redis.call('ZREM', parked, name)
  redis.call('ZADD', free, last, name)
  redis.call('HDEL', keyinfo, 'l:' .. name)
end
redis.call('HDEL', keyinfo, 'a:' .. name)
-- A completed pass with a key back in play is not complete any more.
if was == 'quarantined' then
  redis.call('HSET', meta, 'pass_completed_us', '')
end
if events then
  redis.call('XADD', events, 'MAXLEN', '~', string.format('%d', events_cap), '*',
    'type', 'retried', 'key', name, 'token', '', 'machine', '', 'at_us',
    string.format('%.0f', now_us))
end
return {0, was}
