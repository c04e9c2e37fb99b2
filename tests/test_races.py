"""Concurrent callers: over HTTP on both backends, and many real connections on Valkey."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from redis.asyncio import Redis

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.errors import NoFreeKey
from coordinator.store import Store
from tests.conftest import serve

pytestmark = pytest.mark.anyio

API = "/api/v1"


@pytest.fixture(params=["valkey", "memory"])
async def served(request, valkey, prefix):
    """The app wired as `coordinator serve` wires it: its own Redis client from the URL.

    (The shared `client` fixture's Redis has redis-py's default non-blocking pool of 100
    connections, which 200 concurrent requests exhaust; the service's own pool queues.)
    """
    url = valkey.url if request.param == "valkey" else "memory://"
    async with serve(create_app(Settings(redis_url=url, key_prefix=prefix))) as http:
        yield http


async def test_200_concurrent_grants_on_10_keys(served, new_name):
    client = served
    name = new_name()
    registered = await client.post(f"{API}/process", json={"process_name": name})
    assert registered.status_code == 201

    responses = await asyncio.gather(
        *(
            client.post(
                f"{API}/process/batch_keys", json={"process_name": name, "machine": f"m{i}"}
            )
            for i in range(200)
        )
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 10, 409: 190}
    granted = [r.json() for r in responses if r.status_code == 201]
    assert sorted(g["key"] for g in granted) == list(range(10))
    assert len({g["external_id"] for g in granted}) == 10
    assert sorted(g["fencing_token"] for g in granted) == list(range(1, 11))
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.json()["code"] == "no_free_key"
        assert 1 <= int(refused.headers["Retry-After"]) <= 3600

    listed = (await client.get(f"{API}/process/batch_keys/{name}")).json()
    assert all(k["external_id"] is not None for k in listed)
    by_key = {g["key"]: g for g in granted}
    for key in listed:
        assert key["external_id"] == by_key[key["key"]]["external_id"]
        assert key["machine"] == by_key[key["key"]]["machine"]


async def test_50_concurrent_registrations_of_one_name(client, new_name):
    name = new_name()
    responses = await asyncio.gather(
        *(
            client.post(f"{API}/process", json={"process_name": name, "key_set_size": 7})
            for _ in range(50)
        )
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: 49}
    assert all(r.json()["code"] == "process_exists" for r in responses if r.status_code == 409)

    listed = (await client.get(f"{API}/process/batch_keys/{name}")).json()
    assert [k["key"] for k in listed] == list(range(7))
    processes = (await client.get(f"{API}/process")).json()
    assert [p for p in processes if p["process_name"] == name] == [
        {"process_name": name, "key_set_size": 7, "key_space_size": 7, "lease_seconds": 3600}
    ]


async def test_concurrent_registrations_of_different_sizes_leave_one_whole_process(
    client, new_name
):
    name = new_name()
    sizes = [1 + i % 13 for i in range(30)]
    responses = await asyncio.gather(
        *(
            client.post(f"{API}/process", json={"process_name": name, "key_set_size": s})
            for s in sizes
        )
    )
    winners = [r.json() for r in responses if r.status_code == 201]
    assert len(winners) == 1
    assert Counter(r.status_code for r in responses)[409] == 29
    listed = (await client.get(f"{API}/process/batch_keys/{name}")).json()
    assert len(listed) == winners[0]["key_set_size"]


async def test_concurrent_grants_and_releases_over_http(client, new_name):
    name = new_name()
    await client.post(f"{API}/process", json={"process_name": name, "key_set_size": 5})
    holders: dict[int, str] = {}
    double_grants = []
    completed = Counter()

    async def worker(i):
        for _ in range(10):
            response = await client.post(
                f"{API}/process/batch_keys", json={"process_name": name, "machine": f"w{i}"}
            )
            if response.status_code == 409:
                await asyncio.sleep(0)
                continue
            assert response.status_code == 201
            body = response.json()
            if body["key"] in holders:
                double_grants.append(body["key"])
            holders[body["key"]] = body["external_id"]
            await asyncio.sleep(0)
            del holders[body["key"]]
            released = await client.delete(f"{API}/process/batch_keys/{body['external_id']}")
            assert released.status_code == 200
            completed[body["key"]] += 1

    await asyncio.gather(*(worker(i) for i in range(12)))
    assert double_grants == []
    assert sum(completed.values()) >= 10
    listed = (await client.get(f"{API}/process/batch_keys/{name}")).json()
    assert not any(k["external_id"] for k in listed)


async def test_memory_store_queues_instead_of_failing_past_its_pool():
    """`memory://` (in-process fakeredis) must not answer 503 "Too many connections"."""
    client = connect("memory://", Settings(redis_max_connections=8))
    try:
        store = Store(client, prefix="mem")
        await store.register("p", key_set_size=10)
        results = await asyncio.gather(
            *(store.grant("p", "m") for _ in range(200)), return_exceptions=True
        )
        kinds = Counter(type(r).__name__ for r in results)
        assert kinds == {"BatchKey": 10, "NoFreeKey": 190}
    finally:
        await client.aclose()


async def test_many_real_connections_never_grant_a_key_twice(valkey, prefix):
    """8 separate clients (each its own connection pool and Store) race on one process."""
    clients = [Redis.from_url(valkey.url, decode_responses=True) for _ in range(8)]
    try:
        stores = [Store(c, prefix=prefix) for c in clients]
        await stores[0].register("shared", key_set_size=40, lease_seconds=60)

        async def drain(store, worker):
            got = []
            while True:
                try:
                    got.append(await store.grant("shared", f"w{worker}"))
                except NoFreeKey:
                    return got

        results = await asyncio.gather(*(drain(s, i) for i, s in enumerate(stores)))
        granted = [k for got in results for k in got]
        assert sorted(k.key for k in granted) == list(range(40))
        assert sorted(k.fencing_token for k in granted) == list(range(1, 41))
        assert sum(1 for got in results if got) > 1  # the clients really did interleave

        # Now churn: grant and release concurrently from all 8 clients; a key is never held
        # by two of them at once (a holder forgets a key before it asks to release it).
        for k in granted:
            await stores[k.fencing_token % 8].release(k.external_id)
        holders: dict[int, int] = {}
        violations = []
        tokens_by_key: dict[int, list[int]] = {}

        async def churn(store, worker):
            for _ in range(30):
                try:
                    lease = await store.grant("shared", f"w{worker}")
                except NoFreeKey:
                    continue
                if lease.key in holders:
                    violations.append((lease.key, holders[lease.key], worker))
                holders[lease.key] = worker
                tokens_by_key.setdefault(lease.key, []).append(lease.fencing_token)
                await asyncio.sleep(0)
                del holders[lease.key]
                await store.release(lease.external_id, "completed" if worker % 2 else "failed")

        await asyncio.gather(*(churn(s, i) for i, s in enumerate(stores)))
        assert violations == []
        assert sum(len(t) for t in tokens_by_key.values()) == 8 * 30
        for tokens in tokens_by_key.values():
            assert tokens == sorted(tokens)
        final = await stores[3].batch_keys("shared")
        assert not any(k.held for k in final)
    finally:
        for c in clients:
            await c.aclose()
