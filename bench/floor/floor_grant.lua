-- floor_grant.lua: the least a grant must do, as the yardstick for lua/grant.lua (bench only).
--
-- KEYS[1] free    zset   key -> staleness score (filled by the bench before it starts)
-- KEYS[2] leases  hash   key -> "token|expires_us"
-- KEYS[3] expiry  zset   key -> expires_us
-- KEYS[4] fence   string the last fencing token
-- ARGV[1] lease_ms  lease length in milliseconds (the bench's own, not checked)
--
-- Returns {key, token} granted, {} when no key is free.
-- Nothing else: no expiry reclaimed, no history, no batch runs, no argument checks. Five
-- calls: pop the stalest free key, read the clock, bump the fence, write the lease, set its
-- expiry.
local free, leases, expiry, fence = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local popped = redis.call('ZPOPMIN', free)
local key = popped[1]
if not key then
  return {}
end
local t = redis.call('TIME')
local expires_us = (t[1] * 1000000 + t[2]) + ARGV[1] * 1000
local token = redis.call('INCR', fence)
redis.call('HSET', leases, key, token .. '|' .. string.format('%.0f', expires_us))
redis.call('ZADD', expiry, expires_us, key)
return {tonumber(key), token}
