"""Size: grant cost at 10 keys vs 1,000,000 keys, and Redis memory per key.

The million keys are each granted and completed once by the service's own grant and release
scripts (EVALSHA of `coordinator.scripts.sources()` on the store's key names), pipelined on
raw sockets in batches, so the free sorted set ends up holding every key. Then both
processes are measured with the same client: one task running acquire + release in turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from bench.cpu import CpuWindow
from coordinator.client import AsyncRedisCoordinator
from coordinator.keys import ProcessKeys
from coordinator.scripts import sources
from coordinator.store import Limits

# grant.lua's and release.lua's replies (coordinator.store reads the same fields).
_GRANTED = re.compile(rb"\*12\r\n:0\r\n:-?\d+\r\n:(\d+)\r\n")
_RELEASED = re.compile(rb"\*9\r\n:0\r\n")
_ERROR = re.compile(rb"(^|\r\n)-[A-Z]")  # an error reply; negative integers are ":-5"


def _bulk(arg: bytes | str | int) -> bytes:
    """One argument as a RESP bulk string."""
    raw = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


def _command(*args: bytes | str | int) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(arg) for arg in args)


async def _read_replies(reader: asyncio.StreamReader, count: int) -> bytes:
    """Read until `count` array replies arrived (the replies hold no other '*')."""
    chunks, seen = [], 0
    while seen < count:
        chunk = await reader.read(1 << 20)
        if not chunk:
            raise ConnectionError("Valkey closed the connection")
        if _ERROR.search(chunk):
            raise RuntimeError(f"script error: {chunk[:200]!r}")
        seen += chunk.count(b"*")
        chunks.append(chunk)
    return b"".join(chunks)


async def _fill_worker(url: str, k: ProcessKeys, keys: int, batch: int) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    src = sources()
    grant_sha = hashlib.sha1(src["grant"].encode()).hexdigest()  # noqa: S324 - Redis's script id
    release_sha = hashlib.sha1(src["release"].encode()).hexdigest()  # noqa: S324
    cap = Limits().events_cap
    # The arguments Store.grant and Store.release send: machine, lease_ms (0: the process's),
    # events cap, holder, request id; token, outcome, events cap, holder.
    grant_keys, release_keys = k.of("grant"), k.of("release")
    grant = _command("EVALSHA", grant_sha, len(grant_keys), *grant_keys, "fill", 0, cap, "", "")
    # release: the token filled in per lease.
    head = b"*%d\r\n" % (3 + len(release_keys) + 4) + b"".join(
        _bulk(a) for a in ("EVALSHA", release_sha, len(release_keys), *release_keys)
    )
    tail = _bulk("completed") + _bulk(cap) + _bulk("")
    try:
        done = 0
        while done < keys:
            n = min(batch, keys - done)
            writer.write(grant * n)
            tokens = _GRANTED.findall(await _read_replies(reader, n))
            if len(tokens) != n:
                raise RuntimeError(f"{n - len(tokens)} of {n} grants failed")
            writer.write(b"".join(head + b"$%d\r\n%s\r\n" % (len(t), t) + tail for t in tokens))
            if len(_RELEASED.findall(await _read_replies(reader, n))) != n:
                raise RuntimeError("a release failed")
            done += n
    finally:
        writer.close()


async def _wait_for_aof_rewrite(redis: Redis, limit: float = 120.0) -> None:
    """Let a background AOF rewrite triggered by the fill finish before reading memory."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        info = await redis.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return
        await asyncio.sleep(0.5)


@dataclass
class SizeResult:
    """Fill and memory figures."""

    keys: int
    fill_seconds: float
    used_memory_before: int
    used_memory_after: int
    free_zset_bytes: int
    fill_cpu: CpuWindow

    @property
    def bytes_per_key(self) -> float:
        """used_memory delta / keys."""
        return (self.used_memory_after - self.used_memory_before) / self.keys


async def fill(url: str, valkey_pid: int, keys: int, *, batch: int, connections: int) -> SizeResult:
    """Register a process of `keys` keys and grant + complete every key once."""
    redis = Redis.from_url(url, decode_responses=True)
    coordinator = AsyncRedisCoordinator(url, prefix="bench-size")
    try:
        for name in ("grant", "release"):
            await redis.script_load(sources()[name])
        await _wait_for_aof_rewrite(redis)
        before = int((await redis.info("memory"))["used_memory"])
        await coordinator.register("million", keys)
        k = coordinator.store.keys.process("million")
        share = -(-keys // connections)
        window = CpuWindow({"filler (bench process)": -os.getpid(), "valkey": valkey_pid}).start()
        t0 = time.perf_counter()
        await asyncio.gather(
            *(_fill_worker(url, k, min(share, keys - i * share), batch) for i in range(connections))
        )
        seconds = time.perf_counter() - t0
        window.stop()
        meta = await redis.hgetall(k.meta)
        assert int(meta["fresh"]) == keys, meta
        assert await redis.zcard(k.free) == keys
        assert await redis.zcard(k.held) == 0
        await _wait_for_aof_rewrite(redis)
        after = int((await redis.info("memory"))["used_memory"])
        zset = int(await redis.memory_usage(k.free, samples=0) or 0)
        return SizeResult(keys, seconds, before, after, zset, window)
    finally:
        await coordinator.aclose()
        await redis.aclose()


@dataclass
class LatencyRun:
    """One task's acquire + release cycles, timed one by one, and Valkey's own time."""

    key_set_size: int
    latencies_us: list[float]
    server_us_per_evalsha: float

    @property
    def mean_us(self) -> float:
        """Mean cycle latency."""
        return statistics.fmean(self.latencies_us)

    @property
    def median_us(self) -> float:
        """Median cycle latency."""
        return statistics.median(self.latencies_us)


async def cycle_latency(
    url: str, process: str, key_set_size: int, cycles: int, warmup: int
) -> LatencyRun:
    """Mean acquire + release latency of one task on `process` (prefix bench-size)."""
    coordinator = AsyncRedisCoordinator(url, prefix="bench-size")
    redis = Redis.from_url(url, decode_responses=True)
    try:
        for _ in range(warmup):
            key = await coordinator.acquire(process, "bench")
            await coordinator.release(key.external_id or "")
        await redis.config_resetstat()
        latencies = []
        for _ in range(cycles):
            t0 = time.perf_counter()
            key = await coordinator.acquire(process, "bench")
            await coordinator.release(key.external_id or "")
            latencies.append((time.perf_counter() - t0) * 1e6)
        stats: dict[str, Any] = await redis.info("commandstats")
        evalsha = stats.get("cmdstat_evalsha", {})
        return LatencyRun(key_set_size, latencies, float(evalsha.get("usec_per_call", 0.0)))
    finally:
        await coordinator.aclose()
        await redis.aclose()
