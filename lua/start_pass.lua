-- start_pass.lua: start the next pass of a process now (an administrator's act), in either
-- mode: every key becomes grantable again in least-recently-completed order, attempts are
-- reset and quarantine and backoff are lifted.
--
-- KEYS[1] meta    hash   the process: pass, pass_started_us, pass_completed_us, done, qdone,
--                        epoch (attempts are counted per epoch, so one HINCRBY resets them all),
--                        ending "<pass>|<quarantined>" while a start is lifting in chunks,
--                        failed (the number of the pass that failed, meant while that pass is
--                        current and complete; cleared by the start)
-- KEYS[2] free    zset   key -> staleness score; parked keys return here
-- KEYS[3] keyinfo hash   l:<key> the staleness score of a parked key, a:<key> its attempts,
--                        m:<key> the machine that quarantined it, q:<key> when (all removed
--                        when the key is lifted)
-- KEYS[4] parked  zset   keys in backoff -> retry_at_us; quarantined -> +inf
-- KEYS[5] passes  hash   pass number -> "started_us|completed_us|done|quarantined", and
--                        "<number>:failed" -> 1 for a kept pass that failed its max_failed_keys
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
--         {12, parked}  more than CHUNK keys were parked: CHUNK of them were lifted (as
--                     retry_key.lua lifts one: back in `free` at their old place, attempts
--                     reset) and `parked` are left; the pass has not started: call again
--                     with the same arguments until another status comes back
--
-- Cost: O(CHUNK × log size) per call, whatever the number of parked keys: a key is done in
-- a pass when its staleness score is above pass_started_us, so moving the start forward
-- undoes every key at once, and only the parked keys need moving, CHUNK per call. The pass
-- starts in the call that finds at most CHUNK keys parked, atomically with its `after`
-- check. The keys lifted by the calls before it are grantable in the ending pass (unless
-- it is a complete `once` pass, which grants nothing), as retried keys are; its record
-- counts the keys that were quarantined when the first of those calls ran.
local meta, free, keyinfo, parked, passes, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local events_cap = tonumber(ARGV[1] or '10000')
local after = ARGV[2] or ''
-- Parked keys lifted per call: about 2.5 µs each, so a call takes under 1 ms, and stays
-- under 5 ms when a busy machine or a table resize slows it several times over.
local CHUNK = 250
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
  'done', 'ending', 'failed')
if not p[1] then
  return {1}
end
local number = tonumber(p[2] or '1')
-- A caller that names the pass it follows starts nothing once that pass was followed.
if after ~= '' and tonumber(after) < number then
  return {0, number, tonumber(p[3] or '0'), 0}
elseif after ~= '' and tonumber(after) > number then
  return {11, number}
end

-- The ending pass's quarantine as it was when the start was asked, before any key was lifted.
local ending_pass, quarantined = string.match(p[6] or '', '^(%d+)|(%d+)$')
if tonumber(ending_pass) ~= number then
  quarantined = redis.call('ZCOUNT', parked, '+inf', '+inf')
end

-- Lifts the `count` stalest parked entries back into `free` at their old place, attempts
-- reset; returns how many were quarantined after being done in this pass (counted in qdone).
local function lift(count)
  local entries = redis.call('ZRANGE', parked, 0, count - 1, 'WITHSCORES')
  local n = #entries / 2
  if n == 0 then
    return 0
  end
  local fields = {}
  for i = 1, n do
    fields[i] = 'l:' .. entries[2 * i - 1]
  end
  local lasts = redis.call('HMGET', keyinfo, unpack(fields))
  local scores, started, qdone = {}, tonumber(p[3] or '0'), 0
  for i = 1, n do
    local key, last = entries[2 * i - 1], lasts[i] or '0'
    scores[2 * i - 1], scores[2 * i] = last, key
    fields[n + i] = 'a:' .. key
    fields[2 * n + i] = 'm:' .. key
    fields[3 * n + i] = 'q:' .. key
    local score = entries[2 * i]
    if (score == 'inf' or tonumber(score) == math.huge) and tonumber(last) > started then
      qdone = qdone + 1
    end
  end
  redis.call('ZADD', free, unpack(scores))
  redis.call('HDEL', keyinfo, unpack(fields))
  redis.call('ZREMRANGEBYRANK', parked, 0, n - 1)
  return qdone
end

-- Too many parked keys for one call: lift a chunk and leave the pass as it is.
local left = redis.call('ZCARD', parked)
if left > CHUNK then
  redis.call('HSET', meta, 'ending', string.format('%d|%d', number, quarantined))
  local qdone = lift(CHUNK)
  if qdone > 0 then
    redis.call('HINCRBY', meta, 'qdone', -qdone)
  end
  return {12, left - CHUNK}
end

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = string.format('%.0f', now_us)
-- The pass that ends keeps its record (completed or not) among the last 100; a failed one
-- says so in a field of its own, which readers of the four-part record never see.
local record = string.format('%s|%s|%d|%d', p[3] or '0', p[4] or '', tonumber(p[5] or '0'),
  quarantined)
if p[7] == (p[2] or '1') and (p[4] or '') ~= '' then
  redis.call('HSET', passes, number, record, number .. ':failed', 1)
else
  redis.call('HSET', passes, number, record)
end
redis.call('HDEL', passes, number - 100, (number - 100) .. ':failed')
lift(CHUNK)
redis.call('HDEL', meta, 'ending', 'failed')
redis.call('HINCRBY', meta, 'epoch', 1)
redis.call('HSET', meta, 'pass', number + 1, 'pass_started_us', now, 'pass_completed_us', '',
  'done', 0, 'qdone', 0)
if events then
  redis.call('XADD', events, 'MAXLEN', '~', string.format('%d', events_cap), '*',
    'type', 'pass-started', 'key', '', 'token', '', 'machine', '', 'at_us', now)
end
return {0, number + 1, now_us, 1}
