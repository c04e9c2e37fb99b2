-- unregister.lua: delete a process and end all of its leases at once.
--
-- KEYS[1] meta    hash   {size, lease_ms, fresh, created_us}
-- KEYS[2] free    zset   key -> staleness score
-- KEYS[3] held    zset   key -> expires_us
-- KEYS[4] leases  hash   key -> lease record
-- KEYS[5] tokens  hash   token -> key
-- KEYS[6] freed   list   wake-up signals for waiting grants
-- KEYS[7] events  stream (optional) the process's history; kept, with a `deleted` entry
-- ARGV[1] events_cap  (optional, default 10000) entries the stream keeps, at least
-- (The fence counter is deliberately not touched: fencing tokens keep growing across a
-- delete and a new registration of the same name, and it tells ended leases (410) from
-- never-granted ones (404).)
--
-- Returns {0, size, lease_ms}  deleted; the process as it was
--         {1}                  no such process
--
-- UNLINK frees the large structures off the main thread, so a million-key process is
-- deleted without blocking Redis.
local meta, free, held, leases, tokens, freed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local events = KEYS[7]
local events_cap = tonumber(ARGV[1] or '10000')
if not events_cap or events_cap < 1 then
  return {6, 'events_cap'}
end

local m = redis.call('HMGET', meta, 'size', 'lease_ms')
if not m[1] then
  return {1}
end
redis.call('UNLINK', meta, free, held, leases, tokens, freed)
if events then
  local t = redis.call('TIME')
  redis.call('XADD', events, 'MAXLEN', '~', string.format('%d', events_cap), '*',
    'type', 'deleted', 'key', '', 'token', '', 'machine', '', 'at_us', t[1] .. string.format('%06d', tonumber(t[2])))
end
return {0, tonumber(m[1]), tonumber(m[2])}
