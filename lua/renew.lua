-- renew.lua: extend a live lease from now.
--
-- KEYS[1] free    zset   (unused; kept so every caller's KEYS stay in place)
-- KEYS[2] held    zset   key -> expires_us
-- KEYS[3] leases  hash   key -> "token[:holder]|started_us|expires_us|lease_ms|last|machine"
-- KEYS[4] tokens  hash   token -> key, for the leases that are live
-- KEYS[5] fence   string the process name's last fencing token
-- KEYS[6] freed   list   (unused; kept so every caller's KEYS stay in place)
-- KEYS[7] events  stream (optional) the process's history; each change appends one entry
-- KEYS[8] keyinfo hash   (optional, with 9) c:<key> checkpoint, a:<key> "epoch:attempts"
-- KEYS[9] meta    hash   (optional) the process, for the attempts' epoch
-- ARGV[1] token     the lease's fencing token (decoded from its external_id)
-- ARGV[2] lease_ms  new lease length in milliseconds, 0 to 86400000; 0 keeps the lease's own
-- ARGV[3] events_cap  (optional, default 10000) entries the stream keeps, 1 to 10000000
-- ARGV[4] holder    (optional, default '') the caller's id as passed to grant.lua; '' skips
--                   the check (administrators, trusted direct workers)
-- ARGV[5] checkpoint_op  (optional, default '') 'set' stores ARGV[6] as the key's checkpoint,
--                   'clear' removes it, '' leaves it
-- ARGV[6] checkpoint  (with 'set') a string of at most 4096 bytes
--
-- Returns {0, key, token, started_us, expires_us, last, lease_ms, machine, attempts}  renewed
--         {4}  no lease with this token was ever granted
--         {5}  the lease was granted and has ended (released, expired, or process deleted)
--         {6, argument}  an argument is malformed or out of range; nothing changed
--         {7}  the lease is live and held by another holder; nothing changed
--
-- Times are microseconds from Redis TIME; a lease whose expires_us <= now has ended: the
-- renewal answers 5 and changes nothing (the next grant or release of the key ends it, counting
-- the attempt).
local held, leases, tokens, fence = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local events, keyinfo, meta = KEYS[7], KEYS[8], KEYS[9]
local token = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])
local events_cap = tonumber(ARGV[3] or '10000')
local holder = ARGV[4] or ''
local checkpoint_op, checkpoint = ARGV[5] or '', ARGV[6]
-- The bounds of coordinator/validation.py, for callers that skip it (tests tie the two).
local LEASE_MS_MAX = 86400000
local EVENTS_CAP_MAX = 10000000
local HOLDER_MAX = 64
local CHECKPOINT_BYTES_MAX = 4096

if not lease_ms or lease_ms < 0 or lease_ms > LEASE_MS_MAX or lease_ms ~= math.floor(lease_ms) then
  return {6, 'lease_ms'}
end
if not events_cap or events_cap < 1 or events_cap > EVENTS_CAP_MAX
    or events_cap ~= math.floor(events_cap) then
  return {6, 'events_cap'}
end
if holder ~= '' and (#holder > HOLDER_MAX or not string.match(holder, '^%x+$')) then
  return {6, 'holder'}
end
if (checkpoint_op ~= '' and checkpoint_op ~= 'set' and checkpoint_op ~= 'clear')
    or (checkpoint_op ~= '' and not keyinfo)
    or (checkpoint_op == 'set' and (not checkpoint or #checkpoint > CHECKPOINT_BYTES_MAX)) then
  return {6, 'checkpoint'}
end

-- Numbers go to Redis as text, each made once (see grant.lua); tostring is exact for a cap.
local events_cap_text = tostring(events_cap)
local now_text

-- Appends one entry to the history, when the caller passed the stream (older callers don't).
local function record(kind, key, token, machine)
  if events then
    redis.call('XADD', events, 'MAXLEN', '~', events_cap_text, '*', 'type', kind, 'key', key,
      'token', token, 'machine', machine, 'at_us', now_text)
  end
end

-- Tokens are looked up as text, so only the canonical spelling can name a lease. A token
-- found is live (so issued); one not found is never granted when above the fence, else gone.
local key = ARGV[1] and redis.call('HGET', tokens, ARGV[1])
if not key then
  if not string.match(ARGV[1] or '', '^[1-9]%d*$')
      or token > tonumber(redis.call('GET', fence) or '0') then
    return {4}
  end
  return {5}
end
-- The record must be this token's: a missing or foreign one means this lease is over (a
-- damaged process), and the stale token entry is dropped so it cannot point anywhere again.
local own, owner, started, expires, own_ms, last, machine = string.match(
  redis.call('HGET', leases, key) or '', '^(%d+):?(%x*)|(%d+)|(%d+)|(%d+)|(-?%d+)|(.*)$')
if own ~= ARGV[1] then
  redis.call('HDEL', tokens, ARGV[1])
  return {5}
end
if holder ~= '' and owner ~= holder then
  return {7}
end

local t = redis.call('TIME')
local now_us = t[1] * 1000000 + t[2]
now_text = #t[2] == 6 and t[1] .. t[2] or t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
if tonumber(expires) <= now_us then
  return {5}
end

local lease_ms_text = lease_ms == 0 and own_ms or tostring(lease_ms)
if lease_ms == 0 then
  lease_ms = tonumber(own_ms)
end
local expires_us = now_us + lease_ms * 1000
local expires_text = string.format('%.0f', expires_us)
local prefix = owner == '' and ARGV[1] or ARGV[1] .. ':' .. owner
redis.call('HSET', leases, key, prefix .. '|' .. started .. '|' .. expires_text .. '|'
  .. lease_ms_text .. '|' .. last .. '|' .. machine)
redis.call('ZADD', held, expires_text, key)
record('renewed', key, ARGV[1], machine)
local attempts = 0
if keyinfo then
  if checkpoint_op == 'set' then
    redis.call('HSET', keyinfo, 'c:' .. key, checkpoint)
  elseif checkpoint_op == 'clear' then
    redis.call('HDEL', keyinfo, 'c:' .. key)
  end
  local e, n = string.match(redis.call('HGET', keyinfo, 'a:' .. key) or '', '^(%d+):(%d+)$')
  if e and meta and e == (redis.call('HGET', meta, 'epoch') or '0') then
    attempts = tonumber(n)
  end
end
return {0, tonumber(key), token, tonumber(started), expires_us, tonumber(last), lease_ms, machine,
  attempts}
