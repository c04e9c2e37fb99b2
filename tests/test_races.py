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
from coordinator.keys import KeySpace
from coordinator.models import epoch_us, from_rfc3339
from coordinator.store import Store
from tests.conftest import serve

pytestmark = pytest.mark.anyio

API = "/api/v1"
TOKEN_EPOCH_US = 1_767_225_600_000_000  # grant.lua: tokens count microseconds from 2026-01-01


def assert_tokens_follow_grant_order(tokens, started_us):
    """Tokens of successive grants (a fresh process grants keys 0, 1, 2, ... in turn): each is
    what grant.lua issues after the previous one, max(previous + 1, microseconds since the
    token epoch), so they strictly increase."""
    previous = 0
    for token, started in zip(tokens, started_us, strict=True):
        assert token == max(previous + 1, started - TOKEN_EPOCH_US)
        previous = token
    assert tokens == sorted(set(tokens))


@pytest.fixture(params=["valkey", "memory"])
async def served(request, valkey, prefix):
    """The app wired as `coordinator serve` wires it: its own Redis client from the URL.

    (The shared `client` fixture's Redis has redis-py's default non-blocking pool of 100
    connections, which 200 concurrent requests exhaust; the service's own pool queues.)
    """
    url = valkey.url if request.param == "valkey" else "memory://"
    settings = Settings(redis_url=url, key_prefix=prefix)
    redis = connect(url, settings)  # as the app's lifespan makes it; here the test reads it too
    try:
        async with serve(create_app(settings, redis=redis)) as http:
            yield http, redis
    finally:
        await redis.aclose()


async def test_200_concurrent_grants_on_10_keys(served, new_name, prefix):
    client, redis = served
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
    in_grant_order = sorted(granted, key=lambda g: g["key"])
    assert_tokens_follow_grant_order(
        [g["fencing_token"] for g in in_grant_order],
        [from_rfc3339(g["started_at"]) for g in in_grant_order],
    )
    # None of the 190 refusals issued a token: the last one issued is the last grant's.
    fence = await redis.get(KeySpace(prefix).process(name).fence)
    assert fence == str(in_grant_order[-1]["fencing_token"])
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
    seed_fields = ("process_name", "key_set_size", "key_space_size", "lease_seconds")
    assert [{f: p[f] for f in seed_fields} for p in processes if p["process_name"] == name] == [
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
        in_grant_order = sorted(granted, key=lambda k: k.key)
        assert_tokens_follow_grant_order(
            [k.fencing_token for k in in_grant_order],
            [epoch_us(k.started_at) for k in in_grant_order],
        )
        # The refusals that ended each drain issued no token.
        fence = stores[0].keys.process("shared").fence
        assert await clients[5].get(fence) == str(in_grant_order[-1].fencing_token)
        assert sum(1 for got in results if got) > 1  # the clients really did interleave

        # Now churn: grant and release concurrently from all 8 clients; a key is never held
        # by two of them at once (a holder forgets a key before it asks to release it).
        for k in granted:
            await stores[k.key % 8].release(k.external_id)
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
        drained_max = in_grant_order[-1].fencing_token
        for tokens in tokens_by_key.values():
            assert tokens == sorted(set(tokens))
            assert tokens[0] > drained_max
        final = await stores[3].batch_keys("shared")
        assert not any(k.held for k in final)
    finally:
        for c in clients:
            await c.aclose()
