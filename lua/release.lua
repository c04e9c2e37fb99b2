-- release.lua: end a live lease, stamping the key's completion unless the work failed or an
-- administrator revoked it.
--
-- KEYS[1] free    zset   key -> staleness score; the released key goes back here
-- KEYS[2] held    zset   key -> expires_us
-- KEYS[3] leases  hash   key -> "token[:holder]|started_us|expires_us|lease_ms|last|machine"
-- KEYS[4] tokens  hash   token -> key, for the leases that are live
-- KEYS[5] fence   string the process name's last fencing token
-- KEYS[6] freed   list   wake-up signals for grants waiting for a free key
-- KEYS[7] events  stream (optional) the process's history; each change appends one entry
-- KEYS[8] meta    hash   (optional, with 9-11) the process: pass counters and options
-- KEYS[9] keyinfo hash   (optional) attempts, parked scores, checkpoints, request ids
-- KEYS[10] parked zset   (optional) keys in backoff -> retry_at_us; quarantined -> +inf
-- KEYS[11] passes hash   (optional) pass number -> "started_us|completed_us|done|quarantined"
-- KEYS[12] ended  zset   (optional) request id of an ended lease -> forget_at_us (see grant.lua):
--                        the lease's request id is remembered there for its lease's length
-- ARGV[1] token    the lease's fencing token (decoded from its external_id)
-- ARGV[2] outcome  "completed" (last completion becomes now), "failed" (keeps its old place,
--                  counts an attempt), "interrupted" (the work was stopped, not failed: back
--                  at its old place, no attempt counted, checkpoint kept) or "revoked" (as
--                  failed, by an administrator)
-- ARGV[3] events_cap  (optional, default 10000) entries the stream keeps, 1 to 10000000
-- ARGV[4] holder   (optional, default '') the caller's id as passed to grant.lua; '' skips
--                  the check (administrators, trusted direct workers)
--
-- Returns {0, key, token, started_us, last, machine, attempts, state, retry_at_us}  released;
--            last is the key's staleness score afterwards: completion microsecond, or
--            (key - size) < 0 if never completed; state is free, done, backoff or quarantined
--         {4}  no lease with this token was ever granted
--         {5}  the lease was granted and has ended (released, expired, or process deleted)
--         {6, argument}  an argument is malformed or out of range; nothing changed
--         {7}  the lease is held by another holder; nothing changed
--
-- A completion counts towards the current pass (keys_done) the first time the key is done in
-- it; the release that makes every key done or quarantined completes the pass. An interrupted
-- lease changes nothing but the lease: the key is free again at its old staleness score. A
-- lease ended any other way (failed, revoked, or found expired here, whatever the outcome)
-- counts an attempt and may quarantine the key or hold it back for its backoff. Without KEYS 8-11 (callers older than batch runs)
-- the key simply returns to the free set, as before.
-- Times are microseconds from Redis TIME; a lease whose expires_us <= now has ended.
local free, held, leases, tokens, fence, freed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local events, meta, keyinfo, parked, passes = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local ended = KEYS[12]
local token = tonumber(ARGV[1])
local outcome = ARGV[2]
local events_cap = tonumber(ARGV[3] or '10000')
local holder = ARGV[4] or ''
-- The bounds of coordinator/validation.py, for callers that skip it (tests tie the two).
local EVENTS_CAP_MAX = 10000000
local HOLDER_MAX = 64

-- The outcomes a release may name, each with the history entry it writes (the Python side
-- declares them in coordinator/validation.py and models.py; a test ties the three).
local EVENT_OF = {completed = 'released-completed', failed = 'released-failed',
  interrupted = 'released-interrupted', revoked = 'revoked'}
if not EVENT_OF[outcome] then
  return {6, 'outcome'}
end
if not events_cap or events_cap < 1 or events_cap > EVENTS_CAP_MAX
    or events_cap ~= math.floor(events_cap) then
  return {6, 'events_cap'}
end
if #holder > HOLDER_MAX or not string.match(holder, '^%x*$') then
  return {6, 'holder'}
end
if keyinfo and not (meta and parked and passes) then
  return {6, 'keys'}
end

-- Appends one entry to the history, when the caller passed the stream (older callers don't).
local function record(kind, key, token, machine, at_us)
  if events then
    redis.call('XADD', events, 'MAXLEN', '~', string.format('%d', events_cap), '*', 'type', kind,
      'key', key, 'token', token, 'machine', machine, 'at_us', string.format('%.0f', at_us))
  end
end

-- BEGIN shared: lease endings (the same text in grant.lua and release.lua; a test keeps them so)
-- Completes the current pass once every key is done in it or quarantined: records it in
-- `passes` and the history, and in `rotate` mode starts the next pass at the same instant.
local function complete_pass_if_due(at_us)
  if not parked or not passes then
    return
  end
  local p = redis.call('HMGET', meta, 'size', 'mode', 'pass', 'pass_started_us',
    'pass_completed_us', 'done', 'qdone')
  if (p[5] or '') ~= '' then
    return
  end
  local done, qdone = tonumber(p[6] or '0'), tonumber(p[7] or '0')
  local quarantined = redis.call('ZCOUNT', parked, '+inf', '+inf')
  local rotate = p[2] ~= 'once'
  -- A rotate pass in which nothing was done would complete, and start again, forever.
  if done + quarantined - qdone < tonumber(p[1]) or (rotate and done == 0) then
    return
  end
  local number = tonumber(p[3] or '1')
  local at = string.format('%.0f', at_us)
  redis.call('HSET', passes, number, string.format('%s|%s|%d|%d', p[4] or '0', at, done,
    quarantined))
  redis.call('HDEL', passes, number - 100)
  record('pass-completed', '', '', '', at_us)
  if rotate then
    redis.call('HSET', meta, 'pass', number + 1, 'pass_started_us', at, 'pass_completed_us', '',
      'done', 0, 'qdone', 0)
    record('pass-started', '', '', '', at_us)
  else
    redis.call('HSET', meta, 'pass_completed_us', at)
  end
end

-- A lease ended without completion (failed, expired, revoked): count the attempt, then
-- quarantine the key, hold it back for its backoff, or return it to the free set. Returns
-- the key's attempts, its state and (in backoff) when it is grantable again.
local function park(key, last, at_us)
  if not keyinfo then
    redis.call('ZADD', free, last, key)
    return 0, 'free', 0
  end
  local o = redis.call('HMGET', meta, 'max_attempts', 'backoff_ms', 'epoch', 'pass_started_us')
  local epoch = o[3] or '0'
  local e, n = string.match(redis.call('HGET', keyinfo, 'a:' .. key) or '', '^(%d+):(%d+)$')
  local attempts = (e == epoch and tonumber(n) or 0) + 1
  redis.call('HSET', keyinfo, 'a:' .. key, epoch .. ':' .. attempts)
  local max_attempts, backoff_ms = tonumber(o[1] or '0'), tonumber(o[2] or '0')
  if max_attempts > 0 and attempts >= max_attempts then
    redis.call('ZADD', parked, '+inf', key)
    redis.call('HSET', keyinfo, 'l:' .. key, last)
    if tonumber(last) > tonumber(o[4] or '0') then
      redis.call('HINCRBY', meta, 'qdone', 1)  -- done in this pass, then quarantined
    end
    record('quarantined', key, '', '', at_us)
    complete_pass_if_due(at_us)
    return attempts, 'quarantined', 0
  elseif backoff_ms > 0 then
    local retry_at = at_us + math.min(backoff_ms * 2 ^ (attempts - 1), 3600000) * 1000
    redis.call('ZADD', parked, string.format('%.0f', retry_at), key)
    redis.call('HSET', keyinfo, 'l:' .. key, last)
    return attempts, 'backoff', retry_at
  end
  redis.call('ZADD', free, last, key)
  return attempts, 'free', 0
end

-- Ends the request id a lease was granted for. With `ended`, it is remembered (its r: entry
-- kept, pointing at the ended token) until length_ms after at_us, so a late duplicate of the
-- grant answers this lease's end rather than taking a second key; without (older callers),
-- it is forgotten at once and a duplicate grants anew.
local function end_request(token, length_ms, at_us)
  local rid = keyinfo and redis.call('HGET', keyinfo, 't:' .. token)
  if not rid then
    return
  end
  if ended then
    redis.call('HDEL', keyinfo, 't:' .. token)
    redis.call('ZADD', ended, string.format('%.0f', at_us + tonumber(length_ms) * 1000), rid)
  else
    redis.call('HDEL', keyinfo, 't:' .. token, 'r:' .. rid)
  end
end
-- END shared

-- Tokens are looked up as text, so only the canonical spelling can name a lease.
if not string.match(ARGV[1] or '', '^[1-9]%d*$')
    or token > tonumber(redis.call('GET', fence) or '0') then
  return {4}
end
local key = redis.call('HGET', tokens, ARGV[1])
if not key then
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
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HDEL', tokens, ARGV[1])
redis.call('HDEL', leases, key)
redis.call('ZREM', held, key)
end_request(ARGV[1], own_ms, now_us)
-- Wake one waiting grant (see the store's wait_seconds); stale wake-ups are capped and expire.
redis.call('RPUSH', freed, key)
redis.call('LTRIM', freed, -64, -1)
redis.call('PEXPIRE', freed, 60000)

if tonumber(expires) <= now_us then
  record('expired', key, ARGV[1], machine, now_us)
  park(key, last, now_us)
  return {5}
end

local attempts, state, retry_at = 0, 'free', 0
if outcome == 'completed' then
  -- The first completion of the key in this pass counts towards the pass.
  local once = false
  if meta then
    local p = redis.call('HMGET', meta, 'pass_started_us', 'mode')
    once = p[2] == 'once'
    if tonumber(last) <= tonumber(p[1] or '0') then
      redis.call('HINCRBY', meta, 'done', 1)
    end
  end
  last = string.format('%.0f', now_us)
  redis.call('ZADD', free, last, key)
  if keyinfo then
    redis.call('HDEL', keyinfo, 'a:' .. key, 'c:' .. key)
  end
  record(EVENT_OF[outcome], key, ARGV[1], machine, now_us)
  complete_pass_if_due(now_us)
  state = once and 'done' or 'free'
elseif outcome == 'interrupted' then
  -- A stop is not a failure: the key goes back where it was, its attempts and checkpoint
  -- as they were, and is not parked (no backoff, no quarantine).
  redis.call('ZADD', free, last, key)
  if keyinfo then
    local e, n = string.match(redis.call('HGET', keyinfo, 'a:' .. key) or '', '^(%d+):(%d+)$')
    if e and e == (redis.call('HGET', meta, 'epoch') or '0') then
      attempts = tonumber(n)
    end
  end
  record(EVENT_OF[outcome], key, ARGV[1], machine, now_us)
else
  record(EVENT_OF[outcome], key, ARGV[1], machine, now_us)
  attempts, state, retry_at = park(key, last, now_us)
end
return {0, tonumber(key), token, tonumber(started), tonumber(last), machine, attempts, state,
  retry_at}
