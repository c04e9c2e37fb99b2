-- commands_grant.lua: lua/grant.lua's commands for a plain process, in its order, with Lua as
-- plain as floor_grant.lua's (bench only). What the scripts would cost if all their Lua-side
-- work (checks, parsing, decisions, text) were free and only their commands were left.
--
-- KEYS[1] meta  KEYS[2] free  KEYS[3] held  KEYS[4] leases  KEYS[5] tokens  KEYS[6] fence
-- KEYS[7] events  KEYS[8] keyinfo   (as lua/grant.lua names them)
-- ARGV[1] machine
--
-- Returns {0, key, token} granted, {} when no key is free. The twelve calls of a steady plain
-- grant (every key touched, nothing expired): read the process, the clock, whether keyinfo
-- exists, the expired leases, the stalest free key; take it, read and bump the fence, write the
-- lease and its token, set its expiry, append the history entry.
local meta, free, held, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tokens, fence, events, keyinfo = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
redis.call('HMGET', meta, 'size', 'lease_ms', 'fresh', 'mode', 'pass', 'pass_started_us',
  'pass_completed_us', 'done', 'qdone', 'max_attempts', 'backoff_ms', 'epoch')
local t = redis.call('TIME')
local now = t[1] .. string.format('%06d', t[2])
redis.call('EXISTS', keyinfo)
redis.call('ZRANGEBYSCORE', held, '-inf', now, 'LIMIT', 0, 16)
local top = redis.call('ZRANGE', free, 0, 0, 'WITHSCORES')
local key = top[1]
if not key then
  return {}
end
redis.call('ZREM', free, key)
local token = tonumber(redis.call('GET', fence) or '0') + 1
redis.call('SET', fence, token)
local expires = string.format('%.0f', tonumber(now) + 600000000)
redis.call('HSET', leases, key, token .. '|' .. now .. '|' .. expires .. '|600000|' .. top[2]
  .. '|' .. ARGV[1])
redis.call('HSET', tokens, token, key)
redis.call('ZADD', held, expires, key)
redis.call('XADD', events, 'MAXLEN', '~', '10000', '*', 'type', 'granted', 'key', key, 'token',
  token, 'machine', ARGV[1], 'at_us', now)
return {0, tonumber(key), token}
