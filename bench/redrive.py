"""Bulk redrive at size: retrying every quarantined key of a process, beside a pass start (the
other chunked lift of parked keys) and beside retrying the keys one call at a time.

    .venv/bin/python -m bench.redrive [--keys N] [--one-by-one N]

On a private Valkey: two processes of `--keys` keys, every one quarantined (as grant.lua and
release.lua leave a key that failed its last attempt). Then `retry_quarantined` on one and
`start_pass` on the other, each counted in Valkey's own figures (INFO commandstats: calls and
mean time of EVALSHA; SLOWLOG at 1 ms: the calls over 1 ms and 5 ms, the longest), and
`retry_key` called once per key on the first `--one-by-one` keys of a third process. Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from coordinator.embedded import EmbeddedValkey
from coordinator.store import Store

# Keys first..last-1 quarantined: parked at +inf, staleness score key - size, attempts 1 and
# the failure's machine in keyinfo.
QUARANTINE = """
local parked, keyinfo = KEYS[1], KEYS[2]
local first, last, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local members, fields = {}, {}
for key = first, last - 1 do
  local name = string.format('%d', key)
  members[#members + 1] = 'inf'
  members[#members + 1] = name
  for _, field in ipairs({'l:' .. name, string.format('%d', key - size), 'a:' .. name, '0:1',
      'm:' .. name, 'bench'}) do
    fields[#fields + 1] = field
  end
end
redis.call('ZADD', parked, unpack(members))
redis.call('HSET', keyinfo, unpack(fields))
"""
SLOW_US = 1_000


async def quarantine_all(store: Store, name: str, keys: int) -> None:
    """Register `name` with `keys` keys, every one of them quarantined."""
    await store.register(name, keys, mode="once", max_attempts=1)
    k = store.keys.process(name)
    for first in range(0, keys, 1_000):  # unpack() takes up to 8,000 values
        last = min(first + 1_000, keys)
        await store.redis.eval(QUARANTINE, 2, k.parked, k.keyinfo, first, last, keys)
    await store.redis.hset(k.meta, "fresh", keys)


async def counted(redis: Redis, work: Awaitable[Any]) -> dict[str, float]:
    """Valkey's figures for the script calls `work` makes."""
    await redis.slowlog_reset()
    await redis.config_resetstat()
    start = time.perf_counter()
    await work
    wall = time.perf_counter() - start
    # SLOWLOG logs a script's own commands too; at 1 ms those are never slow, the calls are.
    slow = sorted(
        int(e["duration"])
        for e in await redis.slowlog_get(100_000)
        if _text(e["command"]).upper().startswith("EVALSHA")
    )
    stats = (await redis.info("commandstats"))["cmdstat_evalsha"]
    return {
        "wall_s": round(wall, 2),
        "calls": int(stats["calls"]),
        "mean_ms": round(float(stats["usec_per_call"]) / 1000, 2),
        "over_1ms": len(slow),
        "over_5ms": sum(1 for us in slow if us > 5_000),
        "max_ms": round((slow[-1] if slow else 0) / 1000, 2),
    }


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def measure(keys: int, one_by_one: int) -> dict[str, Any]:
    """Every figure of one run, on a private Valkey."""
    with (
        tempfile.TemporaryDirectory(prefix="bpc-redrive-") as tmp,
        EmbeddedValkey(Path(tmp)) as valkey,
    ):
        async with Redis.from_url(valkey.url, decode_responses=True) as redis:
            store = Store(redis, prefix="bench")
            await redis.config_set("slowlog-log-slower-than", SLOW_US)
            await redis.config_set("slowlog-max-len", 100_000)
            for name in ("bulk", "pass", "single"):
                await quarantine_all(store, name, keys if name != "single" else one_by_one)
            bulk = await counted(redis, store.retry_quarantined("bulk"))
            start_pass = await counted(redis, store.start_pass("pass"))
            start = time.perf_counter()
            for key in range(one_by_one):
                await store.retry_key("single", key)
            single_us = (time.perf_counter() - start) / one_by_one * 1e6
            await store.aclose()
    return {
        "keys": keys,
        "load": os.getloadavg(),
        "retry_quarantined": bulk | {"us_per_key": round(bulk["wall_s"] / keys * 1e6, 1)},
        "start_pass": start_pass,
        "retry_key_one_by_one": {"keys": one_by_one, "us_per_key": round(single_us, 1)},
    }


def main() -> None:
    """Measure once; print a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--one-by-one", type=int, default=20_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.keys, args.one_by_one))), flush=True)


if __name__ == "__main__":
    main()
