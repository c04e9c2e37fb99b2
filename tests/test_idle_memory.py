"""An idle registered process is small at rest: at most 1,500 bytes of Valkey memory over all of
its keys (the issue's bound; it was 4.7 KB, 4.3 KB of it the one-entry history, because Valkey
gives a new stream's first node 4 KB ahead of its entries). register.lua reloads a new history
from its DUMP, which stores it at its size; the history reads as before.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from coordinator.store import Store

pytestmark = pytest.mark.anyio

IDLE_BYTES_MAX = 1_500


async def _memory(redis: Redis, prefix: str, name: str) -> dict[str, int]:
    """MEMORY USAGE of each key of process `name` (every key under its hash tag)."""
    keys = [key async for key in redis.scan_iter(f"{prefix}:{{{name}}}:*")]
    return {key: int(await redis.memory_usage(key, samples=0) or 0) for key in keys}


async def test_an_idle_process_costs_at_most_1500_bytes(
    valkey_redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(valkey_redis, prefix=prefix)
    name = new_name()
    await store.register(name, key_set_size=1_000_000, max_attempts=3, retry_backoff_seconds=5)
    used = await _memory(valkey_redis, prefix, name)
    k = store.keys.process(name)
    assert set(used) == {k.meta, k.events}
    assert sum(used.values()) <= IDLE_BYTES_MAX, used


async def test_the_small_history_reads_and_grows_as_before(
    valkey_redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(valkey_redis, prefix=prefix)
    name = new_name()
    registered = await store.register(name, key_set_size=3)
    [entry] = await store.events(name)
    assert entry.type == "registered"
    assert registered.pass_ is not None
    assert entry.at_us == int(registered.pass_.started_at.timestamp() * 1_000_000)
    lease = await store.grant(name, "m")
    await store.release(lease.external_id or "")
    types = [e.type for e in await store.events(name)]
    assert types == ["registered", "granted", "released-completed"]
    assert await valkey_redis.ttl(store.keys.process(name).events) == -1
