-- wrk_cycle.lua: every connection runs grant -> release cycles against the HTTP API.
--
--   BENCH_PROCESS=name BENCH_OUT=/tmp/out.txt wrk -t64 -c64 -d10s -s bench/wrk_cycle.lua URL
--
-- Run with as many threads as connections: wrk keeps one Lua state per thread, so each
-- connection then owns its state (the external_id between its POST and its DELETE).
-- POST /api/v1/process/batch_keys, read external_id from the JSON body, then
-- DELETE /api/v1/process/batch_keys/<external_id>; a cycle counts once its DELETE answers 200.
-- The grant's latency (request built -> response parsed) is timed with CLOCK_MONOTONIC.
-- done() writes counters and every grant latency (microseconds) to $BENCH_OUT.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local process = os.getenv("BENCH_PROCESS") or "bench-http"
local grant_path = "/api/v1/process/batch_keys"
local grant_body = '{"process_name":"' .. process .. '","machine":"wrk"}'
local grant_headers = {["Content-Type"] = "application/json"}

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per-thread state (each thread has its own copy of these globals).
external_id = nil
sent_at = 0
cycles = 0
grants = 0
grant_bad = 0
release_bad = 0
unparsed = 0
latencies = {}

function request()
  if external_id then
    return wrk.format("DELETE", grant_path .. "/" .. external_id)
  end
  sent_at = now_us()
  return wrk.format("POST", grant_path, grant_headers, grant_body)
end

function response(status, headers, body)
  if external_id then
    if status == 200 then
      cycles = cycles + 1
    else
      release_bad = release_bad + 1
    end
    external_id = nil
    return
  end
  if status ~= 201 then
    grant_bad = grant_bad + 1
    return
  end
  latencies[#latencies + 1] = now_us() - sent_at
  grants = grants + 1
  external_id = string.match(body, '"external_id":"([^"]+)"')
  if not external_id then
    unparsed = unparsed + 1
  end
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_OUT") or "/dev/stdout", "w"))
  local totals = {cycles = 0, grants = 0, grant_bad = 0, release_bad = 0, unparsed = 0}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + thread:get(name)
    end
  end
  for name, value in pairs(totals) do
    out:write(string.format("%s %d\n", name, value))
  end
  local errors = summary.errors
  out:write(string.format("duration_us %d\n", summary.duration))
  out:write(string.format("requests %d\n", summary.requests))
  out:write(string.format("errors_connect %d\nerrors_read %d\nerrors_write %d\n",
    errors.connect, errors.read, errors.write))
  out:write(string.format("errors_status %d\nerrors_timeout %d\n", errors.status, errors.timeout))
  for _, p in ipairs({50, 99}) do
    out:write(string.format("all_requests_p%d_us %d\n", p, latency:percentile(p)))
  end
  for _, thread in ipairs(threads) do
    local samples = thread:get("latencies")
    for i = 1, #samples do
      out:write(string.format("grant_us %.1f\n", samples[i]))
    end
  end
  out:close()
end
