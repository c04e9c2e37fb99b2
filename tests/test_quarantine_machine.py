"""A quarantined key remembers the machine whose lease ended it (keyinfo `m:<key>`).

Whoever looks at the quarantined keys (`pass show`, the dashboard) can then say where the last
failure ran. Every ending that quarantines stores it: a failed release, a revoke, an expiry
found by a grant and one found by a release.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest

from coordinator.errors import AllQuarantined, LeaseGone
from coordinator.store import Store
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def clocked(fake_clock: FakeClock, prefix: str) -> AsyncIterator[Store]:
    """A Store on a fresh fakeredis whose TIME the test moves (fake_clock.advance)."""
    fake_clock.now = 1_800_000_000.0
    client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with client:
        yield Store(client, prefix=prefix)


async def _machine_of(store: Store, name: str, key: int) -> str | None:
    value: str | None = await store.redis.hget(store.keys.process(name).keyinfo, f"m:{key}")
    return value


@pytest.mark.parametrize("ending", ["failed", "revoked"])
async def test_a_failed_or_revoked_ending_stores_the_machine(
    store: Store, new_name, ending: str
) -> None:
    name = new_name()
    await store.register(name, key_set_size=2, max_attempts=2)
    first = await store.grant(name, "host-a/1")
    await store.release(first.external_id, "failed")
    assert await _machine_of(store, name, first.key) is None  # in budget: not quarantined
    again = await store.grant(name, "host-b/7")
    assert again.key == first.key
    if ending == "revoked":
        ended = await store.revoke(again.external_id)
    else:
        ended = await store.release(again.external_id, "failed")
    assert ended.state == "quarantined"
    assert await _machine_of(store, name, first.key) == "host-b/7"


async def test_an_expiry_stores_the_machine_whether_a_grant_or_a_release_finds_it(
    clocked: Store, fake_clock: FakeClock
) -> None:
    await clocked.register("p", key_set_size=2, lease_seconds=10, max_attempts=1)
    by_grant = await clocked.grant("p", "host-c/3")
    by_release = await clocked.grant("p", "host-d/4")
    fake_clock.advance(11)
    # The late release finds its own lease expired; the grant finds the other one.
    with pytest.raises(LeaseGone):
        await clocked.release(by_release.external_id, "completed")
    assert await _machine_of(clocked, "p", by_release.key) == "host-d/4"
    with pytest.raises(AllQuarantined):
        await clocked.grant("p", "host-e/5")
    assert await _machine_of(clocked, "p", by_grant.key) == "host-c/3"
