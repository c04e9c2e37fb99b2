-- inspect.lua: read the state of a run of keys of one process, as one consistent snapshot.
-- Read-only.
--
-- KEYS[1] meta    hash   {size, lease_ms, fresh, created_us, mode, pass_started_us, epoch, ...}
-- KEYS[2] free    zset   key -> staleness score
-- KEYS[3] leases  hash   key -> "token[:holder]|started_us|expires_us|lease_ms|last|machine"
-- KEYS[4] keyinfo hash   (optional, with 5) attempts, parked scores, checkpoints
-- KEYS[5] parked  zset   (optional) keys in backoff -> retry_at_us; quarantined -> +inf
-- ARGV[1] first   the first key to read, 0 to 2^40
-- ARGV[2] count   how many keys to read at most, 0 to 10000 (a bound on the script's time)
-- ARGV[3] with_checkpoint  (optional, default '0') '1' adds each key's checkpoint
--
-- Returns {0, size, lease_ms, now_us, row, row, ...}  one row per key in [first, first+count)
--            row = {key, last, token, started_us, expires_us, machine, attempts, state,
--                   retry_at_us, checkpoint}
--            token, started_us, expires_us are 0 and machine '' unless state is 'held';
--            state is free, held, done (completed in the current pass of a `once` process),
--            backoff (retry_at_us says until when) or quarantined; checkpoint is the key's
--            saved string, or 0 for none (or when not asked for)
--            (a lease or backoff that has ended but is not yet reclaimed reads as free)
--         {1}  no such process
--         {6, argument}  an argument is malformed
local meta, free, leases, keyinfo, parked = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local first = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local with_checkpoint = ARGV[3] == '1'
-- The bounds of coordinator/validation.py, for callers that skip it (tests tie the two).
local KEY_SET_SIZE_MAX = 1099511627776
local INSPECT_COUNT_MAX = 10000

if not first or first < 0 or first > KEY_SET_SIZE_MAX or first ~= math.floor(first) then
  return {6, 'first'}
end
if not count or count < 0 or count > INSPECT_COUNT_MAX or count ~= math.floor(count) then
  return {6, 'count'}
end

local m = redis.call('HMGET', meta, 'size', 'lease_ms', 'fresh', 'mode', 'pass_started_us',
  'epoch')
if not m[1] then
  return {1}
end
local size, fresh = tonumber(m[1]), tonumber(m[3])
local once, pass_started, epoch = m[4] == 'once', tonumber(m[5] or '0'), m[6] or '0'
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local reply = {0, size, tonumber(m[2]), now_us}

for key = first, math.min(first + count, size) - 1 do
  local name = string.format('%d', key)
  local last, state, retry_at = key - size, 'free', 0
  local token, started, expires, machine = 0, 0, 0, ''
  local attempts, checkpoint = 0, 0
  if key < fresh then
    local score = redis.call('ZSCORE', free, name)
    local parked_until = not score and parked and redis.call('ZSCORE', parked, name)
    if score then
      last = tonumber(score)
      if once and last > pass_started then
        state = 'done'
      end
    elseif parked_until then
      last = tonumber(redis.call('HGET', keyinfo, 'l:' .. name) or last)
      local until_us = tonumber(parked_until)
      if until_us == math.huge or parked_until == 'inf' then
        state = 'quarantined'
      elseif until_us > now_us then
        state, retry_at = 'backoff', until_us
      end
    else
      local own, s, e, l, mach = string.match(redis.call('HGET', leases, name) or '',
        '^(%d+):?%x*|(%d+)|(%d+)|%d+|(-?%d+)|(.*)$')
      -- A missing or unreadable record holds nothing: grant.lua frees such a key.
      if own then
        last = tonumber(l)
        if tonumber(e) > now_us then
          state, token, started, expires, machine = 'held', tonumber(own), tonumber(s),
            tonumber(e), mach
        end
      end
    end
    if keyinfo then
      local info = redis.call('HMGET', keyinfo, 'a:' .. name, 'c:' .. name)
      local e, n = string.match(info[1] or '', '^(%d+):(%d+)$')
      if e == epoch then
        attempts = tonumber(n)
      end
      if with_checkpoint and info[2] then
        checkpoint = info[2]
      end
    end
  end
  reply[#reply + 1] = {key, last, token, started, expires, machine, attempts, state, retry_at,
    checkpoint}
end
return reply
