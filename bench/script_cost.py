"""What the batch-run options cost Valkey: its CPU per grant + release cycle, with every option
on, beside a process registered with none.

Each variant repeats the store's own grant + release (the scripts the service and direct
workers run) from `tasks` concurrent tasks; rounds alternate between the variants. Two
figures per cycle, both read from Valkey:

- script time: INFO commandstats' usec for EVALSHA, the time Valkey spent running the scripts;
- process CPU: Valkey's utime + stime over the window (scripts, plus reading and writing the
  sockets), as the HTTP figure reports it.

Variants: `plain` (no options, no request id), `rotate` (max_attempts, retry backoff and a
request id on every grant; a pass completes and the next starts every key_set_size
completions), `once` (the same on a `once` process too large for its pass to complete while
measured).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bench.cpu import tree_cpu_seconds
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.store import Limits, Store

PREFIX = "bench-options"
SMALL_KEYS = 64
ONCE_KEYS = 300_000  # more than the cycles a full run measures: the pass stays open


@dataclass(frozen=True)
class Variant:
    """How a process is registered, and whether grants send a request id."""

    name: str
    key_set_size: int
    options: dict[str, Any]
    request_ids: bool


VARIANTS = (
    Variant("plain", SMALL_KEYS, {}, request_ids=False),
    Variant(
        "rotate",
        SMALL_KEYS,
        {"mode": "rotate", "max_attempts": 3, "retry_backoff_seconds": 1},
        request_ids=True,
    ),
    Variant(
        "once",
        ONCE_KEYS,
        {"mode": "once", "max_attempts": 3, "retry_backoff_seconds": 1},
        request_ids=True,
    ),
)


@dataclass(frozen=True)
class CostRun:
    """One measuring window of one variant."""

    variant: str
    cycles: int
    seconds: float
    evalsha_calls: int
    evalsha_usec: int
    valkey_cpu_seconds: float

    @property
    def script_us_per_cycle(self) -> float:
        """Valkey's time inside the scripts per grant + release."""
        return self.evalsha_usec / self.cycles

    @property
    def valkey_cpu_us_per_cycle(self) -> float:
        """Valkey's process CPU per grant + release."""
        return self.valkey_cpu_seconds * 1e6 / self.cycles


async def _evalsha(stats: Redis) -> tuple[int, int]:
    info: dict[str, Any] = await stats.info("commandstats")
    evalsha = info.get("cmdstat_evalsha", {})
    return int(evalsha.get("calls", 0)), int(evalsha.get("usec", 0))


@asynccontextmanager
async def cycling(cycle: Callable[[], Awaitable[None]], tasks: int) -> AsyncIterator[list[int]]:
    """`tasks` tasks repeating `cycle` while the block runs; yields the count of cycles done
    (one cell, read as it grows). The tasks finish their cycle in flight on the way out."""
    done = [0]
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            await cycle()
            done[0] += 1

    workers = [asyncio.create_task(worker()) for _ in range(tasks)]
    try:
        yield done
    finally:
        stop.set()
        await asyncio.gather(*workers)


async def _window(
    variant: str,
    cycle: Callable[[], Awaitable[None]],
    stats: Redis,
    valkey_pid: int,
    *,
    tasks: int,
    warmup: float,
    duration: float,
) -> CostRun:
    async with cycling(cycle, tasks) as done:
        await asyncio.sleep(warmup)
        first, (calls0, usec0) = done[0], await _evalsha(stats)
        cpu0, t0 = tree_cpu_seconds(valkey_pid), time.perf_counter()
        await asyncio.sleep(duration)
        cycles, seconds = done[0] - first, time.perf_counter() - t0
        cpu1, (calls1, usec1) = tree_cpu_seconds(valkey_pid), await _evalsha(stats)
    # The two INFO calls and the window's edges are not cycles: a cycle counted is a
    # grant and a release, and the window holds whole cycles to within `tasks` of them.
    return CostRun(variant, cycles, seconds, calls1 - calls0, usec1 - usec0, cpu1 - cpu0)


async def measure(
    url: str, valkey_pid: int, *, tasks: int, warmup: float, duration: float, rounds: int
) -> dict[str, list[CostRun]]:
    """Every variant, `rounds` times, alternating; the runs of each."""
    redis = connect(url, Settings())
    store = Store(redis, prefix=PREFIX, limits=Limits())
    stats = Redis.from_url(url, decode_responses=True)
    runs: dict[str, list[CostRun]] = {v.name: [] for v in VARIANTS}
    try:
        cycles = {}
        for variant in VARIANTS:
            await store.register(variant.name, variant.key_set_size, 600, **variant.options)

            async def cycle(variant: Variant = variant) -> None:
                rid = uuid.uuid4().hex if variant.request_ids else None
                key = await store.grant(variant.name, "bench", request_id=rid)
                await store.release(key.external_id or "")

            cycles[variant.name] = cycle
        for _ in range(rounds):
            for variant in VARIANTS:
                runs[variant.name].append(
                    await _window(
                        variant.name,
                        cycles[variant.name],
                        stats,
                        valkey_pid,
                        tasks=tasks,
                        warmup=warmup,
                        duration=duration,
                    )
                )
        for variant in VARIANTS:
            await store.unregister(variant.name)
    finally:
        await store.aclose()
        await redis.aclose()
        await stats.aclose()
    return runs


def summary(runs: dict[str, list[CostRun]]) -> dict[str, Any]:
    """Per variant: cycles, script µs and Valkey CPU µs per cycle; options over plain."""
    out: dict[str, Any] = {}
    for name, variant_runs in runs.items():
        cycles = sum(r.cycles for r in variant_runs)
        out[name] = {
            "cycles": cycles,
            "cycles_per_second": cycles / sum(r.seconds for r in variant_runs),
            "evalsha_per_cycle": round(sum(r.evalsha_calls for r in variant_runs) / cycles, 3),
            "script_us_per_cycle": sum(r.evalsha_usec for r in variant_runs) / cycles,
            "valkey_cpu_us_per_cycle": sum(r.valkey_cpu_seconds for r in variant_runs)
            * 1e6
            / cycles,
            "per_round_script_us": [round(r.script_us_per_cycle, 2) for r in variant_runs],
            "per_round_valkey_cpu_us": [round(r.valkey_cpu_us_per_cycle, 2) for r in variant_runs],
        }
    plain = out["plain"]
    for name in ("rotate", "once"):
        out[name]["script_ratio"] = out[name]["script_us_per_cycle"] / plain["script_us_per_cycle"]
        out[name]["cpu_ratio"] = (
            out[name]["valkey_cpu_us_per_cycle"] / plain["valkey_cpu_us_per_cycle"]
        )
    # The figure the target is on: the costlier of the two option sets, in script time.
    out["ratio"] = max(out["rotate"]["script_ratio"], out["once"]["script_ratio"])
    out["cpu_ratio"] = max(out["rotate"]["cpu_ratio"], out["once"]["cpu_ratio"])
    return out
