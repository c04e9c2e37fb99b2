"""Every kind of history entry the scripts write is declared, and every declared kind is written.

The scripts are run for real, path by path (each way a lease starts, ends or is reclaimed, each
way a pass starts, completes or fails, a retry, a delete), and the process's stream is read as
Valkey holds it: a type a script writes that models.EVENT_TYPES does not declare (and so the
OpenAPI enum and the README do not list) fails here, and so does a declared type no path writes.
"""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from coordinator.errors import NoFreeKey
from coordinator.models import EVENT_TYPES
from coordinator.store import Store

pytestmark = pytest.mark.anyio


async def _written(redis: Redis, store: Store, name: str) -> set[str]:
    entries = await redis.xrange(store.keys.process(name).events)
    return {fields["type"] for _, fields in entries}


async def _every_path(store: Store, names: list[str]) -> None:
    """Drive each script path once, on processes named from `names`."""
    plain, runs, once, gone = names
    await store.register(plain, key_set_size=8)
    lease = await store.grant(plain, "m1")
    await store.renew(lease.external_id)
    await store.release(lease.external_id)  # released-completed
    for outcome in ("failed", "interrupted", "fatal"):
        await store.release((await store.grant(plain, "m1")).external_id, outcome)
    await store.revoke((await store.grant(plain, "m1")).external_id)
    # A one-second lease left to expire is reclaimed by a later grant (expired).
    await store.grant(plain, "m1", lease_seconds=1)
    await anyio.sleep(1.2)
    for _ in range(8):
        try:
            await store.grant(plain, "m1")
        except NoFreeKey:
            break

    await store.register(runs, key_set_size=2, max_attempts=1)
    await store.release((await store.grant(runs, "m1")).external_id, "failed")  # quarantined
    await store.retry_key(runs, 0)  # retried
    await store.start_pass(runs)  # pass-started

    await store.register(once, key_set_size=2, mode="once", max_failed_keys=0)
    await store.release((await store.grant(once, "m1")).external_id, "fatal")  # pass-failed
    await store.start_pass(once)
    for _ in range(2):
        await store.release((await store.grant(once, "m1")).external_id)  # pass-completed

    await store.register(gone, key_set_size=1)
    await store.unregister(gone)  # deleted


async def test_the_scripts_write_exactly_the_declared_event_types(
    valkey_redis: Redis, prefix: str
) -> None:
    store = Store(valkey_redis, prefix=prefix)
    names = [f"types-{n}" for n in ("plain", "runs", "once", "gone")]
    await _every_path(store, names)
    written: set[str] = set()
    for name in names:
        written |= await _written(valkey_redis, store, name)
    await store.aclose()
    assert written - set(EVENT_TYPES) == set(), "written but not declared"
    assert set(EVENT_TYPES) - written == set(), "declared but no path writes it"
