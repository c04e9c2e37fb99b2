-- inspect.lua: read the state of a run of keys of one process, as one consistent snapshot.
-- Read-only.
--
-- KEYS[1] meta    hash   {size, lease_ms, fresh, created_us}
-- KEYS[2] free    zset   key -> staleness score
-- KEYS[3] leases  hash   key -> "token[:holder]|started_us|expires_us|lease_ms|last|machine"
-- ARGV[1] first   the first key to read, 0 to 2^40
-- ARGV[2] count   how many keys to read at most, 0 to 10000 (a bound on the script's time)
--
-- Returns {0, size, lease_ms, now_us, row, row, ...}  one row per key in [first, first+count)
--            row = {key, last}                                      free
--            row = {key, last, token, started_us, expires_us, machine}  under lease
--            (a lease with expires_us <= now_us has ended: the key is free)
--         {1}  no such process
--         {6, argument}  an argument is malformed
local meta, free, leases = KEYS[1], KEYS[2], KEYS[3]
local first = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
-- The bounds of coordinator/validation.py, for callers that skip it (tests tie the two).
local KEY_SET_SIZE_MAX = 1099511627776
local INSPECT_COUNT_MAX = 10000

if not first or first < 0 or first > KEY_SET_SIZE_MAX or first ~= math.floor(first) then
  return {6, 'first'}
end
if not count or count < 0 or count > INSPECT_COUNT_MAX or count ~= math.floor(count) then
  return {6, 'count'}
end

local m = redis.call('HMGET', meta, 'size', 'lease_ms', 'fresh')
if not m[1] then
  return {1}
end
local size, fresh = tonumber(m[1]), tonumber(m[3])
local t = redis.call('TIME')
local reply = {0, size, tonumber(m[2]), tonumber(t[1]) * 1000000 + tonumber(t[2])}

for key = first, math.min(first + count, size) - 1 do
  local row
  if key >= fresh then
    row = {key, key - size}
  else
    local name = string.format('%d', key)
    local score = redis.call('ZSCORE', free, name)
    if score then
      row = {key, tonumber(score)}
    else
      local token, started, expires, last, machine = string.match(
        redis.call('HGET', leases, name) or '', '^(%d+):?%x*|(%d+)|(%d+)|%d+|(-?%d+)|(.*)$')
      if token then
        row = {key, tonumber(last), tonumber(token), tonumber(started), tonumber(expires), machine}
      else
        -- A missing or unreadable record holds nothing: grant.lua frees such a key.
        row = {key, key - size}
      end
    end
  end
  reply[#reply + 1] = row
end
return reply
