"""Waiting for a key: a full process's waiters are woken by releases, not by polling."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import httpx
import pytest
from redis.asyncio import Redis

from coordinator.errors import InvalidField, NoFreeKey
from coordinator.store import Store

pytestmark = pytest.mark.anyio


async def _blocked_clients(redis: Redis) -> int:
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "blpop")


async def _until_blocked(redis: Redis, count: int) -> None:
    """Poll CLIENT LIST until `count` connections sit in BLPOP (bounded)."""
    deadline = time.monotonic() + 5
    while await _blocked_clients(redis) < count:
        assert time.monotonic() < deadline, "the waiter never blocked"
        await asyncio.sleep(0.002)


async def test_a_waiter_is_granted_soon_after_a_release(valkey_redis: Redis, prefix: str) -> None:
    store = Store(valkey_redis, prefix=prefix)
    await store.register("busy", 1)
    latencies = []
    for _ in range(10):
        held = await store.grant("busy", "holder")
        waiter = asyncio.create_task(store.grant("busy", "waiter", wait_seconds=10))
        await _until_blocked(valkey_redis, 1)
        await store.release(held.external_id)
        released_at = time.monotonic()
        granted = await waiter
        latencies.append(time.monotonic() - released_at)
        assert granted.key == held.key
        assert (granted.fencing_token or 0) > (held.fencing_token or 0)
        await store.release(granted.external_id)
    # The contract is 50 ms; the bound leaves room for a loaded CI machine.
    assert statistics.median(latencies) < 0.05, latencies
    assert max(latencies) < 0.25, latencies


async def test_twenty_waiters_on_one_key_are_each_granted_once_in_turn(
    store: Store, redis: Redis
) -> None:
    await store.register("one-key", 1)
    first = await store.grant("one-key", "first")
    timeline: list[tuple[str, int]] = []

    async def worker(n: int) -> int:
        key = await store.grant("one-key", f"w{n}", wait_seconds=30)
        timeline.append(("granted", key.fencing_token or 0))
        await asyncio.sleep(0.005)  # hold the key for a moment of work
        timeline.append(("released", key.fencing_token or 0))
        await store.release(key.external_id)
        return key.fencing_token or 0

    workers = [asyncio.create_task(worker(n)) for n in range(20)]
    await asyncio.sleep(0.05)  # let them all find the process full
    await store.release(first.external_id)
    tokens = await asyncio.gather(*workers)
    assert len(set(tokens)) == 20
    assert min(tokens) > (first.fencing_token or 0)
    # Tokens follow the order the key was handed on in.
    granted_order = [token for event, token in timeline if event == "granted"]
    assert granted_order == sorted(granted_order)
    # One holder at a time: every grant follows the previous holder's release.
    for (event, token), (next_event, next_token) in itertools.pairwise(timeline):
        if event == "granted":
            assert (next_event, next_token) == ("released", token)


async def test_a_wait_that_ends_without_a_key_is_no_free_key(store: Store) -> None:
    await store.register("full", 1, lease_seconds=60)
    await store.grant("full", "holder")
    started = time.monotonic()
    with pytest.raises(NoFreeKey) as raised:
        await store.grant("full", "waiter", wait_seconds=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    assert 1 <= raised.value.retry_after_seconds <= 60


async def test_a_waiter_gets_a_key_whose_lease_expires(valkey_redis: Redis, prefix: str) -> None:
    store = Store(valkey_redis, prefix=prefix)
    await store.register("expiring", 1)
    held = await store.grant("expiring", "stalled", lease_seconds=1)
    granted = await store.grant("expiring", "waiter", wait_seconds=5)
    assert granted.key == held.key
    assert (granted.fencing_token or 0) > (held.fencing_token or 0)
    assert granted.started_at is not None
    assert held.expires_at is not None
    assert granted.started_at >= held.expires_at


@pytest.mark.parametrize("wait", [-1, 60.5, "5", True, None])
async def test_wait_seconds_out_of_range_is_invalid(store: Store, wait: object) -> None:
    await store.register("w", 1)
    with pytest.raises(InvalidField, match="wait_seconds"):
        await store.grant("w", "m", wait_seconds=wait)  # type: ignore[arg-type]
    assert [k.held for k in await store.batch_keys("w")] == [False]


async def test_http_request_waits_for_a_release(client: httpx.AsyncClient, register) -> None:
    process = (await register(key_set_size=1))["process_name"]
    url = "/api/v1/process/batch_keys"
    held = (await client.post(url, json={"process_name": process, "machine": "a"})).json()
    waiting = asyncio.create_task(
        client.post(url, json={"process_name": process, "machine": "b", "wait_seconds": 10})
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    released = await client.delete(f"{url}/{held['external_id']}")
    assert released.status_code == 200
    granted = await waiting
    assert granted.status_code == 201
    assert granted.json()["key"] == held["key"]
    assert granted.json()["machine"] == "b"


@pytest.mark.parametrize("wait", [-1, 61, "10", True])
async def test_http_wait_seconds_is_validated(client: httpx.AsyncClient, register, wait) -> None:
    process = (await register(key_set_size=1))["process_name"]
    response = await client.post(
        "/api/v1/process/batch_keys",
        json={"process_name": process, "machine": "m", "wait_seconds": wait},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_field"
    assert "wait_seconds" in response.json()["detail"]


async def test_http_wait_ending_without_a_key_is_409(client: httpx.AsyncClient, register) -> None:
    process = (await register(key_set_size=1))["process_name"]
    url = "/api/v1/process/batch_keys"
    await client.post(url, json={"process_name": process, "machine": "a"})
    response = await client.post(
        url, json={"process_name": process, "machine": "b", "wait_seconds": 0.2}
    )
    assert response.status_code == 409
    assert response.json()["code"] == "no_free_key"
    assert int(response.headers["Retry-After"]) >= 1
