-- floor_release.lua: the least a release must do, as the yardstick for lua/release.lua (bench
-- only).
--
-- KEYS[1] free    zset   key -> staleness score; the key goes back stamped with now
-- KEYS[2] leases  hash   key -> "token|expires_us"
-- KEYS[3] expiry  zset   key -> expires_us
-- ARGV[1] key     the key the grant answered
-- ARGV[2] token   the token the grant answered
--
-- Returns 1 released, 0 when the key holds no lease of this token.
-- Five calls: read the lease and check its token, read the clock, drop the lease and its
-- expiry, put the key back with its completion time.
local free, leases, expiry = KEYS[1], KEYS[2], KEYS[3]
local key, token = ARGV[1], ARGV[2]
local record = redis.call('HGET', leases, key)
if not record or string.sub(record, 1, #token + 1) ~= token .. '|' then
  return 0
end
local t = redis.call('TIME')
redis.call('HDEL', leases, key)
redis.call('ZREM', expiry, key)
redis.call('ZADD', free, t[1] .. string.format('%06d', t[2]), key)
return 1
