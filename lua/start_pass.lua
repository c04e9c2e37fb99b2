-- start_pass.lua: start the next pass of a process now (an administrator's act), in either
-- mode: every key becomes grantable again in least-recently-completed order, attempts are
-- reset and quarantine and backoff are lifted.
--
-- KEYS[1] meta    hash   the process: pass, pass_started_us, pass_completed_us, done, qdone,
--                        epoch (attempts are counted per epoch, so one HINCRBY resets them all)
-- KEYS[2] free    zset   key -> staleness score; parked keys return here
-- KEYS[3] keyinfo hash   l:<key> the staleness score of a parked key
-- KEYS[4] parked  zset   keys in backoff -> retry_at_us; quarantined -> +inf
-- KEYS[5] passes  hash   pass number -> "started_us|completed_us|done|quarantined"
-- KEYS[6] events  stream (optional) the process's history
-- ARGV[1] events_cap  (optional, default 10000) entries the stream keeps, 1 to 10000000
-- ARGV[2] after       (optional, default '': start one whatever the current pass) the pass the
--                     caller expects to follow, 1 to 2^53 - 1: only if it is the current pass
--                     does a new one start, so a call sent again starts one pass, not two
--
-- Returns {0, pass, started_us, started}  the process's current pass and its start; started
--                     is 1 when this call started it, 0 when `after` was already followed
--                     (then nothing changed)
--         {1}  no such process
--         {6, argument}  an argument is malformed or out of range; nothing changed
--         {11, pass}  `after` is above the current pass (returned): it never started
--
-- Cost: O(parked keys × log size), never the key space: a key is done in a pass when its
-- staleness score is above pass_started_us, so moving the start forward undoes every key.
local meta, free, keyinfo, parked, passes, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local events_cap = tonumber(ARGV[1] or '10000')
local after = ARGV[2] or ''
local EVENTS_CAP_MAX = 10000000
-- The bound of coordinator/validation.py (PASS_NUMBER_MAX), for callers that skip it.
local PASS_NUMBER_MAX = 9007199254740991
if not events_cap or events_cap < 1 or events_cap > EVENTS_CAP_MAX
    or events_cap ~= math.floor(events_cap) then
  return {6, 'events_cap'}
end
if after ~= '' and (not string.match(after, '^[1-9]%d*$') or #after > 16
    or tonumber(after) > PASS_NUMBER_MAX) then
  return {6, 'after'}
end

local p = redis.call('HMGET', meta, 'size', 'pass', 'pass_started_us', 'pass_completed_us',
  'done')
if not p[1] then
  return {1}
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = string.format('%.0f', now_us)
local number = tonumber(p[2] or '1')
-- A caller that names the pass it follows starts nothing once that pass was followed.
if after ~= '' and tonumber(after) < number then
  return {0, number, tonumber(p[3] or '0'), 0}
elseif after ~= '' and tonumber(after) > number then
  return {11, number}
end
local quarantined = redis.call('ZCOUNT', parked, '+inf', '+inf')

-- The pass that ends keeps its record (completed or not) among the last 100.
redis.call('HSET', passes, number, string.format('%s|%s|%d|%d', p[3] or '0', p[4] or '',
  tonumber(p[5] or '0'), quarantined))
redis.call('HDEL', passes, number - 100)
for _, key in ipairs(redis.call('ZRANGE', parked, 0, -1)) do
  redis.call('ZADD', free, redis.call('HGET', keyinfo, 'l:' .. key) or '0', key)
  redis.call('HDEL', keyinfo, 'l:' .. key)
end
redis.call('UNLINK', parked)
redis.call('HINCRBY', meta, 'epoch', 1)
redis.call('HSET', meta, 'pass', number + 1, 'pass_started_us', now, 'pass_completed_us', '',
  'done', 0, 'qdone', 0)
if events then
  redis.call('XADD', events, 'MAXLEN', '~', string.format('%d', events_cap), '*',
    'type', 'pass-started', 'key', '', 'token', '', 'machine', '', 'at_us', now)
end
return {0, number + 1, now_us, 1}
