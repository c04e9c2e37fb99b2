"""Direct-path measurements: N asyncio tasks repeating one cycle on the same client code.

- ours:     AsyncRedisCoordinator acquire + release (the service's Lua scripts, no API hop)
- ceiling:  the same client's connection pool doing two PINGs per cycle
- hand-rolled: one redis-py Lock per key, each worker trying keys in turn from key 0
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bench.cpu import CpuWindow
from coordinator.client import AsyncRedisCoordinator, NoFreeKey
from coordinator.config import Settings
from coordinator.connection import RedisClient, connect

Cycle = Callable[[], Awaitable[bool]]


@dataclass
class TaskRun:
    """Cycles counted in the measuring window, and the CPU each side used in it."""

    label: str
    tasks: int
    seconds: float
    cycles: int
    cpu: CpuWindow
    counters: dict[str, int] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        """Cycles per second in the window."""
        return self.cycles / self.seconds


async def run_tasks(
    label: str,
    cycle: Cycle,
    *,
    tasks: int,
    warmup: float,
    duration: float,
    sides: dict[str, int],
    stats: Redis,
    counters: dict[str, int] | None = None,
) -> TaskRun:
    """`tasks` workers repeat `cycle` (True = one completed cycle); count only in the window.

    `stats` (a client of its own) reads Valkey's command counts at both ends of the window.
    """
    done = [0]
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            if await cycle():
                done[0] += 1

    workers = [asyncio.create_task(worker()) for _ in range(tasks)]
    await asyncio.sleep(warmup)
    counters = counters if counters is not None else {}
    first, before = done[0], dict(counters)
    calls = await command_calls(stats)
    window = CpuWindow(sides).start()
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    cycles, seconds = done[0] - first, time.perf_counter() - t0
    window.stop()
    calls_after = await command_calls(stats)
    after = {name: counters[name] - before.get(name, 0) for name in counters}
    stop.set()
    await asyncio.gather(*workers)
    commands = {
        name: n - calls.get(name, 0)
        for name, n in calls_after.items()
        if name != "info" and n > calls.get(name, 0)
    }
    return TaskRun(label, tasks, seconds, cycles, window, after, commands)


async def command_calls(redis: Redis) -> dict[str, int]:
    """Calls of each command Valkey has served (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _sides(valkey_pid: int) -> dict[str, int]:
    return {"client (bench process)": -os.getpid(), "valkey": valkey_pid}


async def direct_path(
    url: str, valkey_pid: int, *, tasks: int, warmup: float, duration: float, rounds: int
) -> tuple[list[TaskRun], list[TaskRun]]:
    """Ours and the two-PING ceiling, interleaved `rounds` times.

    The ceiling PINGs on a client built as the coordinator builds its own (coordinator's
    `connect`, default settings: a pool of 64) rather than on the coordinator's very pool, of
    which the scripts' shared connection (coordinator.pipeline) keeps one: 64 tasks on 63
    connections would measure the pool's queue."""
    coordinator = AsyncRedisCoordinator(url, prefix="bench-direct")
    name = "direct"
    await coordinator.register(name, 128)
    redis = connect(url, Settings())
    stats = Redis.from_url(url, decode_responses=True)

    async def ours() -> bool:
        key = await coordinator.acquire(name, "bench")
        await coordinator.release(key.external_id or "")
        return True

    async def ceiling() -> bool:
        await redis.ping()
        await redis.ping()
        return True

    our_runs, ceiling_runs = [], []
    try:
        for _ in range(rounds):
            for runs, cycle, label in ((our_runs, ours, "ours"), (ceiling_runs, ceiling, "2xPING")):
                runs.append(
                    await run_tasks(
                        label,
                        cycle,
                        tasks=tasks,
                        warmup=warmup,
                        duration=duration,
                        sides=_sides(valkey_pid),
                        stats=stats,
                    )
                )
    finally:
        await coordinator.aclose()
        await redis.aclose()
        await stats.aclose()
    return our_runs, ceiling_runs


async def held_keys(
    url: str,
    valkey_pid: int,
    *,
    keys: int,
    held: int,
    tasks: int,
    warmup: float,
    duration: float,
    rounds: int,
    sleeps: tuple[float, ...],
) -> tuple[list[TaskRun], dict[float, list[TaskRun]]]:
    """`held` of `keys` keys held by another client all along; ours vs one Lock per key.

    Ours and each variant of the hand-rolled loop take turns, `rounds` times.
    """
    settings = Settings()
    stats = Redis.from_url(url, decode_responses=True)
    # Ours: register, have another client grant the first `held` keys and keep them.
    holder = AsyncRedisCoordinator(url, prefix="bench-held")
    coordinator = AsyncRedisCoordinator(url, prefix="bench-held")
    name = "held"
    await holder.register(name, keys)
    kept = [await holder.acquire(name, "holder", lease_seconds=3600) for _ in range(held)]
    assert sorted(k.key for k in kept) == list(range(held)), "a fresh process grants 0, 1, ..."
    ours_counters = {"no_free_key_after_wait": 0}

    async def ours() -> bool:
        try:
            key = await coordinator.acquire(name, "bench", wait_seconds=10)
        except NoFreeKey:
            ours_counters["no_free_key_after_wait"] += 1
            return False
        await coordinator.release(key.external_id or "")
        return True

    # Theirs: keys 0..held-1 locked by another client for the whole run.
    lock_holder: RedisClient = connect(url, settings)
    client: RedisClient = connect(url, settings)
    prefix = "handrolled"
    locks = [lock_holder.lock(f"{prefix}:{i}", timeout=3600) for i in range(held)]
    for lock in locks:
        assert await lock.acquire(blocking=False)
    their_counters = {"lock_attempts": 0, "full_passes_without_a_key": 0}

    def theirs(sleep: float) -> Cycle:
        async def cycle() -> bool:
            """The loop users write today: try Lock(key) for key 0, 1, ... until one is free;
            after a full pass without one, sleep `sleep` seconds (0: only yield) and retry."""
            for i in range(keys):
                lock = client.lock(f"{prefix}:{i}", timeout=60)
                their_counters["lock_attempts"] += 1
                if await lock.acquire(blocking=False):
                    await lock.release()
                    return True
            their_counters["full_passes_without_a_key"] += 1
            await asyncio.sleep(sleep)
            return False

        return cycle

    our_runs: list[TaskRun] = []
    their_runs: dict[float, list[TaskRun]] = {sleep: [] for sleep in sleeps}
    try:
        for _ in range(rounds):
            our_runs.append(
                await run_tasks(
                    "ours (wait_seconds=10)",
                    ours,
                    tasks=tasks,
                    warmup=warmup,
                    duration=duration,
                    sides=_sides(valkey_pid),
                    stats=stats,
                    counters=ours_counters,
                )
            )
            for sleep in sleeps:
                their_runs[sleep].append(
                    await run_tasks(
                        f"one Lock per key, sleep {sleep:g} s after a full pass",
                        theirs(sleep),
                        tasks=tasks,
                        warmup=warmup,
                        duration=duration,
                        sides=_sides(valkey_pid),
                        stats=stats,
                        counters=their_counters,
                    )
                )
    finally:
        for lock in locks:
            await lock.release()
        for client_ in (client, lock_holder, stats):
            await client_.aclose()
        await coordinator.aclose()
        await holder.aclose()
    return our_runs, their_runs
