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
-- KEYS[9] keyinfo hash   (optional) attempts, parked scores, the machine that quarantined a
--                        key (m:<key>) and when (q:<key>), checkpoints, request ids (see
--                        grant.lua)
-- KEYS[10] parked zset   (optional) keys in backoff -> retry_at_us; quarantined -> +inf
-- KEYS[11] passes hash   (optional) pass number -> "started_us|completed_us|done|quarantined"
-- KEYS[12] ended  zset   (optional) request id of an ended lease -> forget_at_us (see grant.lua):
--                        the lease's request id is remembered there for its lease's length
-- ARGV[1] token    the lease's fencing token (decoded from its external_id)
-- ARGV[2] outcome  "completed" (last completion becomes now), "failed" (keeps its old place,
--                  counts an attempt), "interrupted" (the work was stopped, not failed: back
--                  at its old place, no attempt counted, checkpoint kept), "fatal" (the work
--                  can never succeed as it is: counts an attempt and quarantines the key at
--                  once, whatever max_attempts, also on a process without options) or
--                  "revoked" (as failed, by an administrator)
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
-- counts an attempt and may quarantine the key or hold it back for its backoff; a fatal one
-- quarantines it. A quarantine that takes a `once` pass above its max_failed_keys fails the
-- pass (pass-failed: pass_completed_us set, failed = the pass's number). Without KEYS 8-11 (callers older
-- than batch runs) the key simply returns to the free set, as before, whatever the outcome.
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
-- Wake-up signals kept for waiting grants (see the store's wait_seconds).
local FREED_MAX = 64

-- The outcomes a release may name, each with the history entry it writes (the Python side
-- declares them in coordinator/validation.py and models.py; a test ties the three).
local EVENT_OF = {completed = 'released-completed', failed = 'released-failed',
  interrupted = 'released-interrupted', fatal = 'released-fatal', revoked = 'revoked'}
if not EVENT_OF[outcome] then
  return {6, 'outcome'}
end
if not events_cap or events_cap < 1 or events_cap > EVENTS_CAP_MAX
    or events_cap ~= math.floor(events_cap) then
  return {6, 'events_cap'}
end
if holder ~= '' and (#holder > HOLDER_MAX or not string.match(holder, '^%x+$')) then
  return {6, 'holder'}
end
if keyinfo and not (meta and parked and passes) then
  return {6, 'keys'}
end

-- Numbers go to Redis as text, each made once (see grant.lua); tostring is exact for a cap.
local events_cap_text = tostring(events_cap)
-- Set once the lease is found: the helpers below share them (see grant.lua).
local p, now_us, now_text, kinfo

-- Appends one entry to the history, when the caller passed the stream (older callers don't).
local function record(kind, key, token, machine)
  if events then
    redis.call('XADD', events, 'MAXLEN', '~', events_cap_text, '*', 'type', kind, 'key', key,
      'token', token, 'machine', machine, 'at_us', now_text)
  end
end

-- BEGIN shared: lease endings (the same text in grant.lua and release.lua; a test keeps them so)
-- The process as meta holds it, read once by one HMGET (fields are Redis's text, false when
-- absent) and kept current by the helpers below as they change meta, so no decision reads
-- meta twice. register.lua stores the options only when set: a process without the two
-- that park keys never reads `parked` until a `fatal` release quarantines one of its keys
-- and marks it (`parks`). `failed` names the pass that failed its max_failed_keys: the
-- current pass is failed while it is that one and complete, so a pass started or reopened
-- by a script older than the field is not.
local function read_process()
  local v = redis.call('HMGET', meta, 'size', 'lease_ms', 'fresh', 'mode', 'pass',
    'pass_started_us', 'pass_completed_us', 'done', 'qdone', 'max_attempts', 'backoff_ms',
    'epoch', 'max_failed', 'failed', 'parks')
  return {size = v[1], lease_ms = v[2], fresh = v[3], once = v[4] == 'once', pass = v[5] or '1',
    started = v[6] or '0', completed = v[7] or '', done = v[8] or '0', qdone = v[9] or '0',
    max_attempts = tonumber(v[10] or '0'), backoff_ms = tonumber(v[11] or '0'),
    epoch = v[12] or '0', max_failed = tonumber(v[13] or ''),
    failed = v[14] == (v[5] or '1') and (v[7] or '') ~= '',
    parks = (v[10] or v[11] or v[15]) and true or false}
end

-- Fails the current `once` pass when its quarantined keys (`quarantined`, else counted
-- here) are more than max_failed_keys: it completes now, marked failed, so its waiting and
-- later grants stop (grant.lua answers 13). Returns whether it did. The pass's record in
-- `passes` is written when the next pass starts (start_pass.lua), as for every `once` pass
-- read from meta while current.
local function fail_pass_if_due(quarantined)
  if not (p.once and p.max_failed and p.completed == '') then
    return false
  end
  if (quarantined or redis.call('ZCOUNT', parked, '+inf', '+inf')) <= p.max_failed then
    return false
  end
  redis.call('HSET', meta, 'pass_completed_us', now_text, 'failed', p.pass)
  p.completed, p.failed = now_text, true
  record('pass-failed', '', '', '')
  return true
end

-- Completes the current pass once every key is done in it or quarantined: records it in
-- `passes` and the history, and in `rotate` mode starts the next pass at the same instant.
local function complete_pass_if_due()
  -- A key never granted (>= fresh) is neither done nor quarantined: no count needed then.
  if not parked or not passes or p.completed ~= ''
      or tonumber(p.fresh or '0') < tonumber(p.size) then
    return
  end
  local done, qdone = tonumber(p.done), tonumber(p.qdone)
  local quarantined = p.parks and redis.call('ZCOUNT', parked, '+inf', '+inf') or 0
  -- A rotate pass in which nothing was done would complete, and start again, forever.
  if done + quarantined - qdone < tonumber(p.size) or (not p.once and done == 0) then
    return
  end
  -- Every key done or quarantined, but more quarantined than allowed (after a retry that
  -- reopened a failed pass, say): the pass ends failed, not complete.
  if fail_pass_if_due(quarantined) then
    return
  end
  local number = tonumber(p.pass)
  redis.call('HSET', passes, p.pass, p.started .. '|' .. now_text .. '|' .. p.done .. '|'
    .. quarantined)
  redis.call('HDEL', passes, number - 100)
  record('pass-completed', '', '', '')
  if p.once then
    -- Not failed (fail_pass_if_due said so), whatever an older retry left behind.
    redis.call('HSET', meta, 'pass_completed_us', now_text, 'failed', '')
    p.completed = now_text
  else
    redis.call('HSET', meta, 'pass', number + 1, 'pass_started_us', now_text,
      'pass_completed_us', '', 'done', 0, 'qdone', 0)
    p.pass, p.started, p.done, p.qdone = tostring(number + 1), now_text, '0', '0'
    record('pass-started', '', '', '')
  end
end

-- A lease ended without completion (failed, expired, revoked, fatal): count the attempt,
-- then quarantine the key (a `fatal` end at once, whatever the budget), hold it back for its
-- backoff, or return it to the free set. A quarantine keeps the machine of the lease that
-- ended it (m:<key>) and when (q:<key>, now_us), so whoever looks at the quarantined keys
-- sees where the last failure ran and when it ended. Returns the key's attempts, its state
-- and (in backoff) when it is grantable again.
local function park(key, last, machine, fatal)
  if not (keyinfo and p) then
    redis.call('ZADD', free, last, key)
    return 0, 'free', 0
  end
  local e, n = string.match(redis.call('HGET', keyinfo, 'a:' .. key) or '', '^(%d+):(%d+)$')
  local attempts = (e == p.epoch and tonumber(n) or 0) + 1
  redis.call('HSET', keyinfo, 'a:' .. key, p.epoch .. ':' .. attempts)
  kinfo = true
  if fatal or (p.max_attempts > 0 and attempts >= p.max_attempts) then
    if not p.parks then
      -- A process without the options now has a parked key: from here on its calls read
      -- `parked` (for the pass's count, and for the key's return when it is retried).
      redis.call('HSET', meta, 'parks', '1')
      p.parks = true
    end
    redis.call('ZADD', parked, '+inf', key)
    redis.call('HSET', keyinfo, 'l:' .. key, last, 'm:' .. key, machine, 'q:' .. key, now_text)
    if tonumber(last) > tonumber(p.started) then
      -- done in this pass, then quarantined
      p.qdone = tostring(redis.call('HINCRBY', meta, 'qdone', 1))
    end
    record('quarantined', key, '', '')
    if not fail_pass_if_due() then
      complete_pass_if_due()
    end
    return attempts, 'quarantined', 0
  elseif p.backoff_ms > 0 then
    local retry_at = now_us + math.min(p.backoff_ms * 2 ^ (attempts - 1), 3600000) * 1000
    redis.call('ZADD', parked, string.format('%.0f', retry_at), key)
    redis.call('HSET', keyinfo, 'l:' .. key, last)
    return attempts, 'backoff', retry_at
  end
  redis.call('ZADD', free, last, key)
  return attempts, 'free', 0
end

-- Ends the request id a lease was granted for. With `ended`, it is remembered (its r: entry
-- kept, pointing at the ended token) until length_ms after now, so a late duplicate of the
-- grant answers this lease's end rather than taking a second key; without (older callers),
-- it is forgotten at once and a duplicate grants anew. No keyinfo, no request ids to end.
-- The keyinfo fields given after length_ms go in the same HDEL (a completion's a: and c:).
local function end_request(token, length_ms, ...)
  local rid = kinfo and redis.call('HGET', keyinfo, 't:' .. token)
  if not rid then
    if kinfo and select('#', ...) > 0 then
      redis.call('HDEL', keyinfo, ...)
    end
    return
  end
  if ended then
    redis.call('HDEL', keyinfo, 't:' .. token, ...)
    redis.call('ZADD', ended, string.format('%.0f', now_us + tonumber(length_ms) * 1000), rid)
  else
    redis.call('HDEL', keyinfo, 't:' .. token, 'r:' .. rid, ...)
  end
end
-- END shared

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
now_us = t[1] * 1000000 + t[2]
now_text = #t[2] == 6 and t[1] .. t[2] or t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
p = meta and read_process()
if p and not p.size then
  p = nil  -- a damaged process (meta removed behind our back): no pass to count in
end
-- The batch-run options write keyinfo; otherwise ask whether it exists (see grant.lua).
kinfo = keyinfo and p and (p.parks or redis.call('EXISTS', keyinfo) == 1)
redis.call('HDEL', tokens, ARGV[1])
redis.call('HDEL', leases, key)
redis.call('ZREM', held, key)
-- A live lease completed forgets the key's attempts and checkpoint in the same HDEL.
local live = tonumber(expires) > now_us
if live and outcome == 'completed' then
  end_request(ARGV[1], own_ms, 'a:' .. key, 'c:' .. key)
else
  end_request(ARGV[1], own_ms)
end
-- Wake one waiting grant; stale wake-ups are capped and expire. Past the cap the oldest go
-- down to half of it, so a list nobody waits on is trimmed once per FREED_MAX / 2 releases,
-- not by each.
if redis.call('RPUSH', freed, key) > FREED_MAX then
  redis.call('LTRIM', freed, -FREED_MAX / 2, -1)
end
redis.call('PEXPIRE', freed, 60000)

if not live then
  record('expired', key, ARGV[1], machine)
  park(key, last, machine)
  return {5}
end

local attempts, state, retry_at = 0, 'free', 0
if outcome == 'completed' then
  -- The first completion of the key in this pass counts towards the pass.
  if p and tonumber(last) <= tonumber(p.started) then
    p.done = tostring(redis.call('HINCRBY', meta, 'done', 1))
  end
  last = now_text
  redis.call('ZADD', free, last, key)
  record(EVENT_OF[outcome], key, ARGV[1], machine)
  if p then
    complete_pass_if_due()
  end
  state = p and p.once and 'done' or 'free'
elseif outcome == 'interrupted' then
  -- A stop is not a failure: the key goes back where it was, its attempts and checkpoint
  -- as they were, and is not parked (no backoff, no quarantine).
  redis.call('ZADD', free, last, key)
  if kinfo then
    local e, n = string.match(redis.call('HGET', keyinfo, 'a:' .. key) or '', '^(%d+):(%d+)$')
    if e and e == p.epoch then
      attempts = tonumber(n)
    end
  end
  record(EVENT_OF[outcome], key, ARGV[1], machine)
else
  record(EVENT_OF[outcome], key, ARGV[1], machine)
  attempts, state, retry_at = park(key, last, machine, outcome == 'fatal')
end
return {0, tonumber(key), token, tonumber(started), tonumber(last), machine, attempts, state,
  retry_at}
