-- commands_release.lua: lua/release.lua's commands for a plain process's completion, in its
-- order, with Lua as plain as floor_release.lua's (bench only); see commands_grant.lua.
--
-- KEYS[1] free  KEYS[2] held  KEYS[3] leases  KEYS[4] tokens  KEYS[5] freed  KEYS[6] events
-- KEYS[7] meta  KEYS[8] keyinfo   (as lua/release.lua names them)
-- ARGV[1] token   the token the grant answered
--
-- Returns {0, key} released, {4} for a token with no lease. The thirteen calls: find the
-- token's key and its lease, read the clock, the process, whether keyinfo exists; drop the
-- token, the lease and its expiry, signal a waiting grant (capped as release.lua caps it),
-- count the key done, put it back stamped, append the history entry.
local free, held, leases, tokens = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local freed, events, meta, keyinfo = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local key = redis.call('HGET', tokens, ARGV[1])
if not key then
  return {4}
end
redis.call('HGET', leases, key)
local t = redis.call('TIME')
local now = t[1] .. string.format('%06d', t[2])
redis.call('HMGET', meta, 'size', 'lease_ms', 'fresh', 'mode', 'pass', 'pass_started_us',
  'pass_completed_us', 'done', 'qdone', 'max_attempts', 'backoff_ms', 'epoch')
redis.call('EXISTS', keyinfo)
redis.call('HDEL', tokens, ARGV[1])
redis.call('HDEL', leases, key)
redis.call('ZREM', held, key)
if redis.call('RPUSH', freed, key) > 64 then
  redis.call('LTRIM', freed, -32, -1)
end
redis.call('PEXPIRE', freed, 60000)
redis.call('HINCRBY', meta, 'done', 1)
redis.call('ZADD', free, now, key)
redis.call('XADD', events, 'MAXLEN', '~', '10000', '*', 'type', 'released-completed', 'key', key,
  'token', ARGV[1], 'machine', 'w', 'at_us', now)
return {0, tonumber(key)}
