"""Fencing tokens: strictly increasing, and still above every issued token after a failover."""

from __future__ import annotations

import fakeredis
import pytest
from redis.asyncio import Redis

from coordinator.embedded import EmbeddedValkey
from coordinator.store import Store
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

TOKEN_EPOCH_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


async def test_a_token_is_the_clock_or_one_more_than_the_last(fake_clock: FakeClock) -> None:
    async with fakeredis.FakeAsyncRedis(
        decode_responses=True, server=fakeredis.FakeServer()
    ) as redis:
        store = Store(redis, prefix="fence")
        await store.register("p", 10)
        first = await store.grant("p", "m")
        assert first.fencing_token == round(fake_clock.now * 1e6) - TOKEN_EPOCH_US
        # Grants faster than the clock ticks still get distinct, growing tokens.
        burst = [(await store.grant("p", "m")).fencing_token for _ in range(3)]
        assert burst == [first.fencing_token + 1, first.fencing_token + 2, first.fencing_token + 3]
        fake_clock.advance(5)
        later = await store.grant("p", "m")
        assert later.fencing_token == round(fake_clock.now * 1e6) - TOKEN_EPOCH_US


async def test_tokens_stay_above_grants_a_failover_lost(
    valkey_redis: Redis, valkey: EmbeddedValkey, prefix: str
) -> None:
    raw = Redis.from_url(valkey.url)  # DUMP payloads are bytes
    store = Store(valkey_redis, prefix=prefix)
    await store.register("p", 4)
    kept = await store.grant("p", "m")
    # What a replica holds if replication stops here: a dump of the process's keys.
    k = store.keys.process("p")
    names = [k.meta, k.free, k.held, k.leases, k.tokens, k.fence]
    snapshot = {name: await raw.dump(name) for name in names}
    lost = [await store.grant("p", "m") for _ in range(2)]
    # Failover: the promoted replica never saw the two grants.
    for name, dumped in snapshot.items():
        await raw.delete(name)
        if dumped is not None:
            await raw.restore(name, 0, dumped)
    await raw.aclose()
    regranted = await store.grant("p", "m")
    assert regranted.key == lost[0].key  # the key looks free again: it is granted anew
    assert (regranted.fencing_token or 0) > (kept.fencing_token or 0)
    # ...and its token is above the lost grant's, so a store fenced by it rejects the
    # lost holder's late writes.
    assert (regranted.fencing_token or 0) > max(lease.fencing_token or 0 for lease in lost)
