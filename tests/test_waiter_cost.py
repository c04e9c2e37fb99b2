"""What waiting costs: a release wakes one waiter with one grant, and an answered wait leaves
nothing behind on the server.

A release's signal freed one key, so the waiter it wakes takes it and wakes nobody: the
seed's waiter woke the next one too, whose grant found nothing (three scripts per release).
Counted in Valkey's own commandstats (EVALSHA calls) on the real server, and in the store's
objects with tracemalloc.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from coordinator.models import BatchKey
from coordinator.store import Store
from tests.test_pipeline_faults import until

pytestmark = pytest.mark.anyio

WAITERS = 20


async def _scripts_run(redis: Redis) -> int:
    """EVALSHA calls Valkey has run so far (this xdist worker's Valkey: tests run one by one)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_release_wakes_one_waiter_with_one_grant(
    valkey_redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(valkey_redis, prefix=prefix)
    name = new_name()
    await store.register(name, key_set_size=1, lease_seconds=600)
    held = await store.grant(name, "holder")
    # Loaded now, so no call below meets NOSCRIPT (a refused EVALSHA, then the same again).
    await store.scripts.load_missing()
    start = await _scripts_run(valkey_redis)
    crowd = [
        asyncio.create_task(store.grant(name, f"w{n}", wait_seconds=60)) for n in range(WAITERS)
    ]
    # Each waiter's first try found the key held; now they all wait, holding no script.
    await until(lambda: store.waiters.waiting == WAITERS)
    ran: list[int] = []

    async def settled() -> bool:
        ran.append(await _scripts_run(valkey_redis))
        return ran[-1] == start + WAITERS

    while not await settled():
        assert len(ran) < 1000, ran[-1] - start
        await asyncio.sleep(0.01)
    before = ran[-1]

    await store.release(held.external_id or "")
    first = await _next_answered(crowd)
    await store.release(first.external_id or "")
    second = await _next_answered(crowd)
    # Two releases, two grants: no waiter was woken to find the key already taken (which
    # would come between the first grant and the second: one more script each).
    assert await _scripts_run(valkey_redis) - before == 4
    assert first.machine != second.machine
    assert store.waiters.waiting == WAITERS - 2
    for task in crowd:
        task.cancel()
    await asyncio.gather(*crowd, return_exceptions=True)


async def _next_answered(crowd: list[asyncio.Task[BatchKey]]) -> BatchKey:
    """The next waiter answered, taken out of `crowd`."""
    done, _ = await asyncio.wait(crowd, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, done
    (task,) = done
    crowd.remove(task)
    return task.result()


async def test_answered_waits_leave_no_memory_behind(
    valkey_redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(valkey_redis, prefix=prefix)
    name = new_name()
    await store.register(name, key_set_size=1, lease_seconds=600)
    held = await store.grant(name, "holder")

    async def answered_waits(count: int) -> BatchKey:
        lease = held
        for n in range(count):
            waiter = asyncio.create_task(store.grant(name, f"w{n}", wait_seconds=60))
            await until(lambda: store.waiters.waiting == 1)
            await store.release(lease.external_id or "")
            lease = await waiter
        return lease

    held = await answered_waits(50)  # warm: caches, pools, the listener's first connection
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held = await answered_waits(200)
        await until(lambda: store.waiters.listeners == 0)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # Generous: 1 KB a wait would be 200 KB; the issue saw 24 KB a wait.
    assert grown < 200 * 1024, grown
