-- grant.lua: lease the free key whose work is stalest to one worker.
--
-- KEYS[1] meta    hash   {size, lease_ms, fresh, created_us} and the batch-run fields: mode,
--                        max_attempts, backoff_ms, max_failed, pass, pass_started_us,
--                        pass_completed_us, done, qdone, epoch, failed (the number of the pass
--                        that failed: the current one is failed while complete and so named),
--                        parks ('1' once a fatal release parked a key of a process without
--                        the options) (all optional; absent means the seed's behaviour)
-- KEYS[2] free    zset   key -> staleness score of touched keys that are free (see below)
-- KEYS[3] held    zset   key -> expires_us of keys under lease
-- KEYS[4] leases  hash   key -> "token[:holder]|started_us|expires_us|lease_ms|last|machine"
-- KEYS[5] tokens  hash   token -> key, for the leases that are live
-- KEYS[6] fence   string the process name's last fencing token (never deleted)
-- KEYS[7] events  stream (optional) the process's history; each change appends one entry
-- KEYS[8] keyinfo hash   (optional) a:<key> "epoch:attempts", l:<key> the staleness score of a
--                        parked key, m:<key> the machine whose lease quarantined it,
--                        q:<key> when it was quarantined (microseconds), c:<key> checkpoint,
--                        r:<rid> token, t:<token> rid, where rid is holder:request_id (just
--                        request_id for the empty holder)
-- KEYS[9] parked  zset   (optional) keys in backoff -> retry_at_us; quarantined keys -> +inf
-- KEYS[10] passes hash   (optional) pass number -> "started_us|completed_us|done|quarantined"
-- KEYS[11] ended  zset   (optional) rid (see keyinfo) of an ended lease -> forget_at_us: until then
--                        its r:<rid> entry stays, naming the ended lease's token
-- ARGV[1] machine   any string of 1 to 1024 bytes, stored as given
-- ARGV[2] lease_ms  lease length in milliseconds, 0 to 86400000; 0 takes the process's default
-- ARGV[3] events_cap  (optional, default 10000) entries the stream keeps, 1 to 10000000
-- ARGV[4] holder    (optional, default '') who may renew and release the lease: up to 64 hex
--                   digits (the API passes its token's id); '' for trusted direct workers
-- ARGV[5] request_id  (optional, default '') 1 to 512 bytes: while a lease granted with it is
--                   live, the same lease is answered again (element 12 is then 1); once it
--                   has ended, its end is answered ({5, token}) for at least the lease's length.
--                   Only to the same holder: another holder's request id is another request
--
-- Returns {0, key, token, started_us, expires_us, last, size, lease_ms, reclaimed, attempts,
--             checkpoint, existing}  granted; reclaimed = expired leases this call ended;
--             checkpoint = the key's saved string, or 0 for none; existing = 1 when the lease
--             was granted earlier to the same request_id
--         {1}                 no such process
--         {3, retry_after_us} no key grantable now; microseconds until the earliest lease
--                             expiry or backoff end
--         {5, token}          the lease granted earlier to this request_id has ended (released,
--                             expired or revoked); nothing granted
--         {6, argument}       an argument is missing, malformed or out of range; nothing changed
--         {8}                 a `once` process whose current pass is complete
--         {9}                 nothing grantable, held or in backoff: every other key quarantined
--         {13}                a `once` process whose current pass failed: more keys quarantined
--                             than its max_failed_keys
--
-- Times are microseconds since the epoch from Redis TIME. `last` is the staleness score:
-- the microsecond of the key's last completion, or (key - size) < 0 if it never completed,
-- so never-completed keys sort first, lowest number first. Keys >= `fresh` were never
-- touched; they are not stored, and the next of them has score (fresh - size). A key is done
-- in the current pass when its score is above pass_started_us, so "not done in this pass" is
-- one score comparison and a new pass costs nothing per key.
-- Fencing tokens are max(last token + 1, microseconds since 2026-01-01 by Redis TIME): they
-- strictly increase on one server, and after a failover that lost the newest grants
-- (replication is asynchronous) the promoted replica still hands out tokens above every token
-- the old primary gave, unless its clock is behind by more than the failover took.
-- Cost: O(log size) plus at most RECLAIM_LIMIT expired leases and backoffs ended and
-- FORGET_LIMIT ended request ids forgotten.
local meta, free, held, leases, tokens, fence = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local events, keyinfo, parked, passes, ended = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local machine = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local events_cap = tonumber(ARGV[3] or '10000')
local holder = ARGV[4] or ''
local request_id = ARGV[5] or ''
local RECLAIM_LIMIT = 16
-- Each lease ends once and each grant forgets up to this many ended request ids, so the
-- remembered ones never pile up behind the grants that made them.
local FORGET_LIMIT = 4
local TOKEN_EPOCH_US = 1767225600000000
-- The bounds of coordinator/validation.py, for callers that skip it (tests tie the two).
local LEASE_MS_MAX = 86400000
local EVENTS_CAP_MAX = 10000000
local MACHINE_BYTES_MAX = 1024
local HOLDER_MAX = 64
local REQUEST_ID_BYTES_MAX = 512

if not machine or machine == '' or #machine > MACHINE_BYTES_MAX then
  return {6, 'machine'}
end
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
if #request_id > REQUEST_ID_BYTES_MAX or (request_id ~= '' and not keyinfo) then
  return {6, 'request_id'}
end
-- A request id is remembered under its holder: another token replaying it (a guess, or one
-- read off a log) makes a request of its own and learns nothing of the first holder's lease.
-- Holders are hex, so the first ':' ends one; the empty holder (open mode, trusted direct
-- workers, who may act on every lease anyway) keeps the bare id.
local rid = request_id
if holder ~= '' and request_id ~= '' then
  rid = holder .. ':' .. request_id
end

-- Numbers go to Redis as text: Lua's own conversion prints 1.7e+15 for microseconds, and
-- string.format costs as much as a command, so each text is made once (tostring is exact
-- below 10^14, enough for a cap, a lease length or a never-completed key's score).
local events_cap_text = tostring(events_cap)
-- Set once the process is read and the clock is: the helpers below share them. kinfo is
-- whether keyinfo may hold anything (a process that never used a batch-run feature has no
-- keyinfo, and then pays nothing for one).
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

p = read_process()
if not p.size then
  return {1}
end
local size, fresh = tonumber(p.size), tonumber(p.fresh)
local lease_ms_text = lease_ms == 0 and p.lease_ms or tostring(lease_ms)
if lease_ms == 0 then
  lease_ms = tonumber(p.lease_ms)
end
local t = redis.call('TIME')
now_us = t[1] * 1000000 + t[2]
now_text = #t[2] == 6 and t[1] .. t[2] or t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
-- A request id and the batch-run options write keyinfo; otherwise ask whether it exists.
kinfo = keyinfo and (request_id ~= '' or p.parks or redis.call('EXISTS', keyinfo) == 1)

-- Ended leases' request ids whose time is up are forgotten: a few per grant.
if ended and kinfo then
  local due = redis.call('ZRANGEBYSCORE', ended, '-inf', now_text, 'LIMIT', 0, FORGET_LIMIT)
  for _, rid in ipairs(due) do
    redis.call('ZREM', ended, rid)
    redis.call('HDEL', keyinfo, 'r:' .. rid)
  end
end

-- The same request again: while its lease lives, answer that lease; once it has ended,
-- answer its end. Either way grant nothing.
if request_id ~= '' then
  local earlier = redis.call('HGET', keyinfo, 'r:' .. rid)
  local key = earlier and redis.call('HGET', tokens, earlier)
  local r = key and redis.call('HGET', leases, key)
  local own, started, expires, own_ms, last, machine_then = string.match(r or '',
    '^(%d+):?%x*|(%d+)|(%d+)|(%d+)|(-?%d+)|(.*)$')
  if own == earlier and own and tonumber(expires) > now_us then
    local e, n = string.match(redis.call('HGET', keyinfo, 'a:' .. key) or '', '^(%d+):(%d+)$')
    return {0, tonumber(key), tonumber(own), tonumber(started), tonumber(expires), tonumber(last),
      size, tonumber(own_ms), 0, e == p.epoch and tonumber(n) or 0,
      redis.call('HGET', keyinfo, 'c:' .. key) or 0, 1}
  end
  if earlier then
    return {5, tonumber(earlier)}
  end
end

-- An expired lease has ended without completion: count the attempt and park or free the key,
-- no background job needed. A record that is missing or unreadable (never written by these
-- scripts) names no token or completion: the key goes back as never completed.
local expired = redis.call('ZRANGEBYSCORE', held, '-inf', now_text, 'LIMIT', 0, RECLAIM_LIMIT)
for _, key in ipairs(expired) do
  local token, own_ms, last, machine_then = string.match(redis.call('HGET', leases, key) or '',
    '^(%d+):?%x*|%d+|%d+|(%d+)|(-?%d+)|(.*)$')
  if token then
    redis.call('HDEL', tokens, token)
    end_request(token, own_ms)
  else
    token, last, machine_then = '', string.format('%d', (tonumber(key) or 0) - size), ''
  end
  redis.call('HDEL', leases, key)
  redis.call('ZREM', held, key)
  record('expired', key, token, machine_then)
  if tonumber(key) then
    park(key, last, machine_then)
  end
end

-- A backoff that has ended returns its key to the free set, at its old place.
if parked and p.parks then
  local due = redis.call('ZRANGEBYSCORE', parked, '-inf', now_text, 'LIMIT', 0, RECLAIM_LIMIT)
  for _, key in ipairs(due) do
    redis.call('ZREM', parked, key)
    redis.call('ZADD', free, redis.call('HGET', keyinfo, 'l:' .. key) or '0', key)
    redis.call('HDEL', keyinfo, 'l:' .. key)
  end
end

-- The pass state as the steps above left it (a quarantine may have completed it).
if p.once and p.completed ~= '' then
  return {p.failed and 13 or 8}
end
local pass_started = tonumber(p.started)

-- The stalest free key; in a `once` pass, only if it is not done in this pass. `name` and
-- `last` are the key and its score as text.
local name, last
local stalest = redis.call('ZRANGE', free, 0, 0, 'WITHSCORES')
local candidate = stalest[1] and tonumber(stalest[2])
if candidate and p.once and candidate > pass_started then
  candidate = nil
end
if fresh < size and (candidate == nil or candidate > fresh - size) then
  name, last = p.fresh, tostring(fresh - size)
  redis.call('HINCRBY', meta, 'fresh', 1)
elseif candidate then
  name, last = stalest[1], stalest[2]
  redis.call('ZREM', free, name)
else
  -- Nothing grantable: wait for the earliest expiry or backoff end, or stop for good.
  local earliest = redis.call('ZRANGE', held, 0, 0, 'WITHSCORES')
  local backoff = parked and redis.call('ZRANGE', parked, 0, 0, 'WITHSCORES') or {}
  local wake = earliest[2] and tonumber(earliest[2])
  local backoff_end = backoff[2] and tonumber(backoff[2])
  if backoff_end and backoff_end < math.huge then  -- +inf is a quarantine, not a backoff
    wake = math.min(wake or math.huge, backoff_end)
  end
  if wake then
    return {3, wake - now_us}
  end
  if backoff[1] and not p.once then
    return {9}
  end
  if p.once then
    -- Every key done or quarantined, yet the pass not complete: a release by a script older
    -- than `parks` did not count a fatal key's quarantine (a rolling deploy). Complete it.
    complete_pass_if_due()
    if p.completed ~= '' then
      return {p.failed and 13 or 8}
    end
  end
  -- Nothing held either can only be a damaged process (keys removed behind our back):
  -- answer busy for a second rather than fail.
  return {3, 1000000}
end

local token = math.max(tonumber(redis.call('GET', fence) or '0') + 1, now_us - TOKEN_EPOCH_US)
local token_text = string.format('%.0f', token)
redis.call('SET', fence, token_text)
local expires_us = now_us + lease_ms * 1000
local expires_text = string.format('%.0f', expires_us)
local owner = holder == '' and token_text or token_text .. ':' .. holder
redis.call('HSET', leases, name, owner .. '|' .. now_text .. '|' .. expires_text .. '|'
  .. lease_ms_text .. '|' .. last .. '|' .. machine)
redis.call('HSET', tokens, token_text, name)
redis.call('ZADD', held, expires_text, name)
record('granted', name, token_text, machine)
local attempts, checkpoint = 0, 0
if kinfo then
  if request_id ~= '' then
    redis.call('HSET', keyinfo, 'r:' .. rid, token_text, 't:' .. token_text, rid)
  end
  local info = redis.call('HMGET', keyinfo, 'a:' .. name, 'c:' .. name)
  local e, n = string.match(info[1] or '', '^(%d+):(%d+)$')
  if e and e == p.epoch then
    attempts = tonumber(n)
  end
  checkpoint = info[2] or 0
end
return {0, tonumber(name), token, now_us, expires_us, tonumber(last), size, lease_ms, #expired,
  attempts, checkpoint, 0}
