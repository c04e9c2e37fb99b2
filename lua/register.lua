-- register.lua: create a process's key space, or refuse because the name is taken.
--
-- KEYS[1] meta   hash {size, lease_ms, fresh, created_us}; its existence is the registration
-- ARGV[1] key_set_size  integer >= 1
-- ARGV[2] lease_ms      default lease length of this process's grants, in milliseconds
--
-- Returns {0, created_us}  registered (microseconds since the epoch, from Redis TIME)
--         {2}              a process of this name is already registered
--         {6, argument}    an argument is missing or malformed; nothing changed
--
-- Constant work whatever the size: no key exists in Redis until it is first granted
-- (grant.lua hands out the never-touched keys 0, 1, 2, ... from the `fresh` counter), so
-- registering a million keys blocks Redis no longer than registering ten.
local meta = KEYS[1]
local size = ARGV[1]
local lease_ms = ARGV[2]

for i, argument in ipairs({'key_set_size', 'lease_ms'}) do
  local value = tonumber(ARGV[i])
  if not value or value < 1 or value ~= math.floor(value) then
    return {6, argument}
  end
end

if redis.call('EXISTS', meta) == 1 then
  return {2}
end

local t = redis.call('TIME')
local created_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HSET', meta, 'size', size, 'lease_ms', lease_ms, 'fresh', 0,
  'created_us', string.format('%.0f', created_us))
return {0, created_us}
