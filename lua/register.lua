-- register.lua: create a process's key space, or refuse because the name is taken.
--
-- KEYS[1] meta   hash {size, lease_ms, fresh, created_us} and the options given (mode,
--                max_attempts, backoff_ms, max_failed); its existence is the registration
-- KEYS[2] events stream (optional) the process's history (kept across delete and re-register);
--                a new one is written once and reloaded from its DUMP, so it is stored at its
--                size (about 300 bytes) rather than in a 4 KB node
-- ARGV[1] key_set_size  integer, 1 to 2^40
-- ARGV[2] lease_ms      default lease length of this process's grants, 1 to 86400000 ms
-- ARGV[3] events_cap    (optional, default 10000) entries the stream keeps, 1 to 10000000
-- ARGV[4] mode          (optional, default 'rotate') 'rotate' or 'once' (see grant.lua)
-- ARGV[5] max_attempts  (optional, default 0: no limit) 0 to 1000; a key whose leases end this
--                       many times in a row without completion is quarantined
-- ARGV[6] backoff_ms    (optional, default 0) 0 to 3600000; after a lease ends without
--                       completion the key waits backoff_ms * 2^(attempts-1), at most an hour
-- ARGV[7] max_failed    (optional, default '': no limit) 0 to key_set_size, `once` mode only:
--                       a pass in which more keys than this are quarantined fails (grant.lua)
--
-- Returns {0, created_us}  registered (microseconds since the epoch, from Redis TIME); its
--                          pass 1 starts at created_us
--         {2}              a process of this name is already registered
--         {6, argument}    an argument is missing or malformed; nothing changed
--
-- Constant work whatever the size: no key exists in Redis until it is first granted
-- (grant.lua hands out the never-touched keys 0, 1, 2, ... from the `fresh` counter), so
-- registering a million keys blocks Redis no longer than registering ten.
local meta, events = KEYS[1], KEYS[2]
local size = ARGV[1]
local lease_ms = ARGV[2]
local events_cap = tonumber(ARGV[3] or '10000')
-- The bounds of coordinator/validation.py, for callers that skip it (tests tie the two).
local KEY_SET_SIZE_MAX = 1099511627776
local LEASE_MS_MAX = 86400000
local EVENTS_CAP_MAX = 10000000
local MAX_ATTEMPTS_MAX = 1000
local BACKOFF_MS_MAX = 3600000
local mode = ARGV[4] or 'rotate'
if mode ~= 'rotate' and mode ~= 'once' then
  return {6, 'mode'}
end
for i, bound in ipairs({{5, 'max_attempts', MAX_ATTEMPTS_MAX}, {6, 'backoff_ms', BACKOFF_MS_MAX}}) do
  local value = tonumber(ARGV[bound[1]] or '0')
  if not value or value < 0 or value > bound[3] or value ~= math.floor(value) then
    return {6, bound[2]}
  end
end

if not events_cap or events_cap < 1 or events_cap > EVENTS_CAP_MAX
    or events_cap ~= math.floor(events_cap) then
  return {6, 'events_cap'}
end
for i, bound in ipairs({{'key_set_size', KEY_SET_SIZE_MAX}, {'lease_ms', LEASE_MS_MAX}}) do
  local value = tonumber(ARGV[i])
  if not value or value < 1 or value > bound[2] or value ~= math.floor(value) then
    return {6, bound[1]}
  end
end
-- A rotate pass never ends for good, so a failed one would have nothing to stop: refused.
local max_failed = ARGV[7] or ''
if max_failed ~= '' then
  local value = tonumber(max_failed)
  if not value or value < 0 or value > tonumber(size) or value ~= math.floor(value)
      or mode ~= 'once' then
    return {6, 'max_failed'}
  end
  max_failed = string.format('%d', value)
end

if redis.call('EXISTS', meta) == 1 then
  return {2}
end

-- Stored in canonical form: '1e3' or '10.0' would pass the checks above as numbers.
size, lease_ms = string.format('%.0f', tonumber(size)), string.format('%.0f', tonumber(lease_ms))
local t = redis.call('TIME')
local created_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local created = string.format('%.0f', created_us)
redis.call('HSET', meta, 'size', size, 'lease_ms', lease_ms, 'fresh', 0, 'created_us', created,
  'pass', 1, 'pass_started_us', created, 'pass_completed_us', '', 'done', 0, 'qdone', 0)
if mode == 'once' then
  redis.call('HSET', meta, 'mode', mode)
end
for _, option in ipairs({{5, 'max_attempts'}, {6, 'backoff_ms'}}) do
  local value = tonumber(ARGV[option[1]] or '0')
  if value > 0 then
    redis.call('HSET', meta, option[2], string.format('%d', value))
  end
end
if max_failed ~= '' then
  redis.call('HSET', meta, 'max_failed', max_failed)
end
if events then
  -- A deleted process's history was set to expire (unregister.lua): the name lives again.
  local new = redis.call('EXISTS', events) == 0
  redis.call('PERSIST', events)
  redis.call('XADD', events, 'MAXLEN', '~', string.format('%d', events_cap), '*',
    'type', 'registered', 'key', '', 'token', '', 'machine', '', 'at_us',
    string.format('%.0f', created_us), 'size', size)
  -- Valkey gives a new stream's first node 4 KB ahead of its entries, most of an idle
  -- process's memory; a stream loaded from its DUMP takes only what it holds (~300 bytes).
  if new then
    redis.call('RESTORE', events, 0, redis.call('DUMP', events), 'REPLACE')
  end
end
return {0, created_us}
