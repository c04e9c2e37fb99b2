"""A request_id is remembered after its lease ends, so a late duplicate never takes a second key.

A grant that names the request_id of a lease that has ended (released, revoked, expired) answers
that lease's end, LeaseGone / HTTP 410 `lease_gone` naming it, and takes nothing; it is
remembered for the lease's length after its end, then forgotten a few at a time by later grants
(memory stays bounded), and deleting the process forgets it with the rest. Store tests run on the
real Valkey and on fakeredis[lua]; the ones that move time run on fakeredis's clock.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import httpx
import pytest
from redis.asyncio import Redis

from coordinator.errors import LeaseGone
from coordinator.keys import KeySpace
from coordinator.openapi import document
from coordinator.store import Store
from tests.conftest import FakeClock
from tests.test_api_errors import assert_problem

pytestmark = pytest.mark.anyio

KEYS = "/api/v1/process/batch_keys"
FORGET_LIMIT = 4  # grant.lua's


async def test_a_late_duplicate_after_release_answers_410_and_takes_no_key(
    client: httpx.AsyncClient, register: Callable[..., Any]
) -> None:
    process = await register(key_set_size=2)
    name = process["process_name"]
    body = {"process_name": name, "machine": "m", "request_id": "job-1"}
    granted = await client.post(KEYS, json=body)
    assert granted.status_code == 201, granted.text
    first = granted.json()
    assert (await client.delete(f"{KEYS}/{first['external_id']}")).status_code == 200

    late = assert_problem(await client.post(KEYS, json=body), 410, "lease_gone")
    assert first["external_id"] in late["detail"]
    keys = (await client.get(f"{KEYS}/{name}")).json()
    assert [k["state"] for k in keys] == ["free", "free"]  # nobody holds anything
    # Another request id still grants.
    other = await client.post(KEYS, json={**body, "request_id": "job-2"})
    assert other.status_code == 201, other.text
    metrics = (await client.get("/metrics")).text
    assert 'coordinator_grants_total{outcome="lease_gone"} 1.0' in metrics


async def test_revoked_and_expired_leases_answer_their_end(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=3)
    revoked = await store.grant(name, "w", request_id="r-revoked")
    await store.revoke(revoked.external_id)
    with pytest.raises(LeaseGone) as gone:
        await store.grant(name, "w", request_id="r-revoked")
    assert gone.value.external_id == revoked.external_id
    interrupted = await store.grant(name, "w", request_id="r-interrupted")
    await store.release(interrupted.external_id, "interrupted")
    with pytest.raises(LeaseGone) as gone:
        await store.grant(name, "w", request_id="r-interrupted")
    assert gone.value.external_id == interrupted.external_id
    # The two keys given back are the only ones held by nobody: no second holder appeared.
    assert [k.state for k in await store.batch_keys(name)] == ["free", "free", "free"]


@pytest.fixture
async def clocked(fake_clock: FakeClock, prefix: str) -> AsyncIterator[tuple[Store, Redis]]:
    """A Store on a fresh fakeredis whose TIME the test moves (fake_clock.advance)."""
    client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with client:
        yield Store(client, prefix=prefix), client


async def test_an_expired_lease_answers_its_end_before_and_after_reclaim(
    clocked: tuple[Store, Redis], fake_clock: FakeClock
) -> None:
    store, _ = clocked
    await store.register("p", key_set_size=1, lease_seconds=10)
    lease = await store.grant("p", "w", request_id="slow")
    fake_clock.advance(11)
    # Expired, not yet reclaimed: the duplicate is told so and does not take the key itself.
    with pytest.raises(LeaseGone) as gone:
        await store.grant("p", "w", request_id="slow")
    assert gone.value.external_id == lease.external_id
    other = await store.grant("p", "w")  # reclaims the expired lease
    assert other.key == lease.key
    with pytest.raises(LeaseGone):
        await store.grant("p", "w", request_id="slow")


async def test_an_ended_request_id_is_forgotten_after_its_lease_length(
    clocked: tuple[Store, Redis], fake_clock: FakeClock, prefix: str
) -> None:
    store, redis = clocked
    k = KeySpace(prefix).process("p")
    await store.register("p", key_set_size=20, lease_seconds=60)
    for n in range(10):
        lease = await store.grant("p", "w", request_id=f"job-{n}")
        await store.release(lease.external_id)
    assert await redis.zcard(k.ended) == 10
    assert len([f for f in await redis.hkeys(k.keyinfo) if f.startswith("r:")]) == 10

    fake_clock.advance(59)  # within the lease length: all remembered
    with pytest.raises(LeaseGone):
        await store.grant("p", "w", request_id="job-0")
    assert await redis.zcard(k.ended) == 10

    fake_clock.advance(2)  # past it: each grant forgets a few, never more
    sizes = [await redis.zcard(k.ended)]
    while sizes[-1]:
        lease = await store.grant("p", "w")
        await store.release(lease.external_id)
        sizes.append(await redis.zcard(k.ended))
    assert all(0 < a - b <= FORGET_LIMIT for a, b in itertools.pairwise(sizes))
    assert not [f for f in await redis.hkeys(k.keyinfo) if f[:2] in ("r:", "t:")]
    again = await store.grant("p", "w", request_id="job-0")  # forgotten: grants anew
    assert not again.replayed


async def test_deleting_a_process_forgets_its_request_ids(store: Store, redis: Redis, new_name,
                                                          prefix: str) -> None:  # fmt: skip
    name = new_name()
    k = KeySpace(prefix).process(name)
    await store.register(name, key_set_size=1)
    lease = await store.grant(name, "w", request_id="once")
    await store.release(lease.external_id)
    assert await redis.exists(k.ended)
    await store.unregister(name)
    assert not await redis.exists(k.ended, k.keyinfo)
    await store.register(name, key_set_size=1)
    assert not (await store.grant(name, "w", request_id="once")).replayed


def test_the_grant_route_documents_its_410() -> None:
    grant = document()["paths"]["/api/v1/process/batch_keys"]["post"]
    assert "410" in grant["responses"]
    assert "lease_gone" in grant["responses"]["410"]["description"]
