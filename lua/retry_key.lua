-- retry_key.lua: give keys another chance (an administrator's act): lift their quarantine
-- and backoff and reset their attempts, at most CHUNK_MAX keys per call. A quarantined key
-- of a completed `once` pass reopens the pass until the key is done or quarantined again (a
-- redrive of the failed slice), and the pass is no longer failed.
--
-- KEYS[1] meta    hash   the process: size, pass_started_us, pass_completed_us, qdone, failed
-- KEYS[2] free    zset   key -> staleness score; the key returns here if parked
-- KEYS[3] keyinfo hash   a:<key> "epoch:attempts", l:<key> the score of a parked key,
--                        m:<key> the machine of the failure that quarantined it, q:<key>
--                        when (all removed here)
-- KEYS[4] parked  zset   keys in backoff -> retry_at_us; quarantined -> +inf
-- KEYS[5] events  stream (optional) the process's history
-- ARGV[1] events_cap  entries the stream keeps, 1 to 10000000
-- ARGV[2] which       "keys": the keys from ARGV[3] on (1 to CHUNK_MAX of them, each 0 to
--                     size - 1); "quarantined": the first ARGV[3] (1 to CHUNK_MAX)
--                     quarantined keys, in the order of their names
--
-- Returns {0, quarantined, backoff, other, left}  done: how many of the keys were
--                     quarantined, in backoff or neither before, and how many keys of the
--                     process are quarantined now
--         {1}  no such process
--         {6, argument}  an argument is malformed or out of range; nothing changed
--         {10, key}  a key is outside the key space (returned); nothing changed
--
-- Cost: O(CHUNK_MAX × log size) per call: the caller sends a longer list, or all the
-- quarantined keys of a process, a chunk per call, so no call holds Redis long. Per key one
-- ZSCORE (a listed key) and one XADD (its retried event); the rest is one command per call.
-- A key listed twice is retried once.
local meta, free, keyinfo, parked, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local events_cap = tonumber(ARGV[1])
local which = ARGV[2]
local EVENTS_CAP_MAX = 10000000
-- Keys per call: about 4 µs each with their event, so a call takes about 1 ms, and stays
-- under 5 ms when a busy machine slows it several times over (coordinator/validation.py's
-- RETRY_CHUNK).
local CHUNK_MAX = 250
-- The largest key number's digits (coordinator/validation.py's KEY_MAX is 2^40 - 1).
local KEY_DIGITS_MAX = 13
if not events_cap or events_cap < 1 or events_cap > EVENTS_CAP_MAX
    or events_cap ~= math.floor(events_cap) then
  return {6, 'events_cap'}
end
if which ~= 'keys' and which ~= 'quarantined' then
  return {6, 'which'}
end
if which == 'keys' then
  if #ARGV < 3 or #ARGV - 2 > CHUNK_MAX then
    return {6, 'keys'}
  end
  for i = 3, #ARGV do
    if not string.match(ARGV[i], '^%d+$') or #ARGV[i] > KEY_DIGITS_MAX then
      return {6, 'keys'}
    end
  end
else
  local count = tonumber(ARGV[3] or '')
  if not count or count < 1 or count > CHUNK_MAX or count ~= math.floor(count) then
    return {6, 'count'}
  end
end
local m = redis.call('HMGET', meta, 'size', 'pass_started_us')
if not m[1] then
  return {1}
end
local size, started_us = tonumber(m[1]), tonumber(m[2] or '0')

-- The keys of this call (each once), every one checked before anything changes, and the
-- score each has in `parked` (false: not parked).
local names, until_us = {}, {}
if which == 'keys' then
  local seen = {}
  for i = 3, #ARGV do
    local key = tonumber(ARGV[i])
    if key >= size then
      return {10, string.format('%d', key)}
    end
    local name = string.format('%d', key)
    if not seen[name] then
      seen[name] = true
      names[#names + 1] = name
    end
  end
  for i, name in ipairs(names) do
    until_us[i] = redis.call('ZSCORE', parked, name)
  end
else
  names = redis.call('ZRANGEBYSCORE', parked, '+inf', '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
  for i = 1, #names do
    until_us[i] = 'inf'
  end
end

local t = redis.call('TIME')
local now_us = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
local counts = {quarantined = 0, backoff = 0, other = 0}
local unparked, lasts, back, fields = {}, {}, {}, {}
for i, name in ipairs(names) do
  if until_us[i] then
    unparked[#unparked + 1] = name
    lasts[#lasts + 1] = 'l:' .. name
  end
  fields[#fields + 1] = 'a:' .. name
  fields[#fields + 1] = 'l:' .. name
  fields[#fields + 1] = 'm:' .. name
  fields[#fields + 1] = 'q:' .. name
end
local last = #lasts > 0 and redis.call('HMGET', keyinfo, unpack(lasts)) or {}
local undone, j = 0, 0
for i = 1, #names do
  local was = 'other'
  if until_us[i] then
    j = j + 1
    local score = last[j] or '0'
    if until_us[i] == 'inf' or tonumber(until_us[i]) == math.huge then
      was = 'quarantined'
      -- A key quarantined after it was done in this pass is counted in qdone.
      if tonumber(score) > started_us then
        undone = undone + 1
      end
    else
      was = 'backoff'
    end
    back[#back + 1] = score
    back[#back + 1] = names[i]
  end
  counts[was] = counts[was] + 1
end
if #unparked > 0 then
  redis.call('ZREM', parked, unpack(unparked))
  redis.call('ZADD', free, unpack(back))
end
if #fields > 0 then
  redis.call('HDEL', keyinfo, unpack(fields))
end
if undone > 0 then
  redis.call('HINCRBY', meta, 'qdone', -undone)
end
-- A completed pass with a key back in play is not complete any more, nor failed.
if counts.quarantined > 0 then
  redis.call('HSET', meta, 'pass_completed_us', '')
  redis.call('HDEL', meta, 'failed')
end
-- One retried event per key; the last one trims the history for all of them (the stream is
-- never seen untrimmed: the call is atomic).
if events then
  for i, name in ipairs(names) do
    if i < #names then
      redis.call('XADD', events, '*',
        'type', 'retried', 'key', name, 'token', '', 'machine', '', 'at_us', now_us)
    else
      redis.call('XADD', events, 'MAXLEN', '~', string.format('%d', events_cap), '*',
        'type', 'retried', 'key', name, 'token', '', 'machine', '', 'at_us', now_us)
    end
  end
end
return {0, counts.quarantined, counts.backoff, counts.other,
  redis.call('ZCOUNT', parked, '+inf', '+inf')}
