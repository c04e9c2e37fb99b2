-- unregister.lua: delete a process and end all of its leases at once.
--
-- KEYS[1] meta    hash   {size, lease_ms, fresh, created_us}
-- KEYS[2] free    zset   key -> staleness score
-- KEYS[3] held    zset   key -> expires_us
-- KEYS[4] leases  hash   key -> lease record
-- KEYS[5] tokens  hash   token -> key
-- KEYS[6] freed   list   wake-up signals for waiting grants
-- KEYS[7] events  stream (optional) the process's history; kept, with a `deleted` entry,
--                 for ARGV[2] milliseconds (a new registration of the name keeps it for good)
-- KEYS[8] keyinfo hash   (optional, as 9-11) batch-run state per key, deleted with the process
-- KEYS[9] parked  zset   (optional) keys in backoff or quarantine, deleted with it
-- KEYS[10] passes hash   (optional) the last finished passes, deleted with it
-- KEYS[11] ended  zset   (optional) remembered request ids of ended leases, deleted with it
-- KEYS 12-18 (optional) doomed names, unique to this deletion, for free, held, leases,
--            tokens, keyinfo, parked and ended: those structures are renamed to them, for
--            the caller to empty in bounded chunks (coordinator/drain.py), rather than freed
-- ARGV[1] events_cap  (optional, default 10000) entries the stream keeps, 1 to 10000000
-- ARGV[2] history_ms  (optional, default 604800000: 7 days) how long the deleted process's
--                     history stays, 1 to 31536000000 (a year)
-- (The fence counter is deliberately not touched: fencing tokens keep growing across a
-- delete and a new registration of the same name, and it tells ended leases (410) from
-- never-granted ones (404).)
--
-- Returns {0, size, lease_ms}  deleted; the process as it was
--         {1}                  no such process
--         {6, argument}        an argument is malformed or out of range; nothing changed
--
-- Without doomed names the large structures are UNLINKed: O(1) here, but freeing a million
-- members at once on the lazy-free thread stalls Valkey (coordinator/drain.py says how).
-- Renamed, they stay out of the way of a new registration of the name, and expire after
-- DOOMED_MS should the caller die before draining them.
local meta, free, held, leases, tokens, freed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local events = KEYS[7]
local events_cap = tonumber(ARGV[1] or '10000')
local history_ms = tonumber(ARGV[2] or '604800000')
-- The bounds of coordinator/validation.py, for callers that skip it (tests tie the two).
local EVENTS_CAP_MAX = 10000000
local HISTORY_MS_MAX = 31536000000
if not events_cap or events_cap < 1 or events_cap > EVENTS_CAP_MAX
    or events_cap ~= math.floor(events_cap) then
  return {6, 'events_cap'}
end
if not history_ms or history_ms < 1 or history_ms > HISTORY_MS_MAX
    or history_ms ~= math.floor(history_ms) then
  return {6, 'history_ms'}
end

local m = redis.call('HMGET', meta, 'size', 'lease_ms')
if not m[1] then
  return {1}
end
-- Enough for a caller to drain a million-key process many times over.
local DOOMED_MS = 3600000
-- The structures that grow with the key set or the leases, and their doomed names.
local LARGE = {2, 3, 4, 5, 8, 9, 11}
for i, source in ipairs(LARGE) do
  local doomed = KEYS[11 + i]
  if doomed and KEYS[source] and redis.call('EXISTS', KEYS[source]) == 1 then
    redis.call('RENAME', KEYS[source], doomed)
    redis.call('PEXPIRE', doomed, DOOMED_MS)
  end
end
redis.call('UNLINK', meta, free, held, leases, tokens, freed)
for i = 8, 11 do
  if KEYS[i] then
    redis.call('UNLINK', KEYS[i])
  end
end
if events then
  local t = redis.call('TIME')
  redis.call('XADD', events, 'MAXLEN', '~', string.format('%d', events_cap), '*',
    'type', 'deleted', 'key', '', 'token', '', 'machine', '', 'at_us', t[1] .. string.format('%06d', tonumber(t[2])))
  -- Per-run names (nightly-2026-11-27) must not add up: the history goes after a while.
  redis.call('PEXPIRE', events, string.format('%d', history_ms))
end
return {0, tonumber(m[1]), tonumber(m[2])}
