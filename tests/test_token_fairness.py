"""Scoped tokens cannot use one another's request ids, waits or pollers.

A `request_id` is bound to the holder that sent it: another token replaying it is a request of
its own (a new lease, never the first holder's lease, checkpoint or end). Waiting grants and pass
waits are capped per token and still counted in the replica's cap, so one team cannot fill the
replica. Pass waits on one process share one history reader, however many there are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import httpx
import pytest
from redis.asyncio import Redis

from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.embedded import EmbeddedValkey
from coordinator.errors import LeaseGone
from coordinator.store import Store
from coordinator.waiters import per_token_cap
from tests.conftest import serve
from tests.test_api_errors import assert_problem
from tests.test_waiters import replica, until

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
KEYS = f"{API}/batch_keys"
ADMIN, ADMIN_LINE = new_token("admin")
ALICE, ALICE_LINE = new_token("worker")
MALLORY, MALLORY_LINE = new_token("worker")
TOKENS = ";".join((ADMIN_LINE, ALICE_LINE, MALLORY_LINE))
ALICE_ID, MALLORY_ID = "a1" * 8, "b2" * 8  # holders as the API passes them: hex token ids


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api(valkey: EmbeddedValkey, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """One replica with tokens on, over the real Valkey."""
    settings = Settings(key_prefix=prefix, tokens=TOKENS)
    async with AsyncExitStack() as stack:
        redis = connect(valkey.url, settings)
        stack.push_async_callback(redis.aclose)
        yield await stack.enter_async_context(serve(create_app(settings, redis=redis)))


async def _register(client: httpx.AsyncClient, name: str, size: int) -> None:
    body = {"process_name": name, "key_set_size": size, "lease_seconds": 60}
    assert (await client.post(API, json=body, headers=_as(ADMIN))).status_code == 201


async def test_a_request_id_replayed_by_another_token_gets_nothing_of_the_first_lease(
    api: httpx.AsyncClient, new_name: Callable[[], str]
) -> None:
    name = new_name()
    await _register(api, name, 2)
    body = {"process_name": name, "machine": "alice-box", "request_id": "job-1"}
    first = await api.post(KEYS, json=body, headers=_as(ALICE))
    assert first.status_code == 201, first.text
    alice = first.json()
    saved = {"checkpoint": "alice's secret progress"}
    renewed = await api.patch(f"{KEYS}/{alice['external_id']}", json=saved, headers=_as(ALICE))
    assert renewed.status_code == 200, renewed.text

    replay = await api.post(KEYS, json={**body, "machine": "m"}, headers=_as(MALLORY))
    assert replay.status_code == 201, replay.text  # a new grant, not 200 with Alice's lease
    mallory = replay.json()
    assert mallory["external_id"] != alice["external_id"]
    assert mallory["key"] != alice["key"]
    assert mallory.get("checkpoint") is None
    # Alice's own replay still answers her lease, and Mallory's his.
    again = await api.post(KEYS, json=body, headers=_as(ALICE))
    assert again.status_code == 200, again.text
    assert again.json()["external_id"] == alice["external_id"]
    theirs = await api.post(KEYS, json=body, headers=_as(MALLORY))
    assert (theirs.status_code, theirs.json()["external_id"]) == (200, mallory["external_id"])

    # Once Alice's lease has ended, its end (naming it) is hers alone to hear.
    assert (await api.delete(f"{KEYS}/{alice['external_id']}", headers=_as(ALICE))).is_success
    assert (await api.delete(f"{KEYS}/{mallory['external_id']}", headers=_as(MALLORY))).is_success
    late = assert_problem(await api.post(KEYS, json=body, headers=_as(ALICE)), 410, "lease_gone")
    assert alice["external_id"] in late["detail"]
    gone = assert_problem(await api.post(KEYS, json=body, headers=_as(MALLORY)), 410, "lease_gone")
    assert alice["external_id"] not in gone["detail"]


async def test_the_store_keeps_each_holders_request_ids_apart(
    store: Store, new_name: Callable[[], str]
) -> None:
    name = new_name()
    await store.register(name, key_set_size=3)
    alice = await store.grant(name, "w", holder=ALICE_ID, request_id="r")
    await store.renew(alice.external_id, holder=ALICE_ID, checkpoint="hers")
    mallory = await store.grant(name, "w", holder=MALLORY_ID, request_id="r")
    assert not mallory.replayed
    assert (mallory.external_id, mallory.checkpoint) != (alice.external_id, "hers")
    # The empty holder (open mode, direct workers) has ids of its own too.
    direct = await store.grant(name, "w", request_id="r")
    assert not direct.replayed
    assert len({alice.key, mallory.key, direct.key}) == 3
    assert (await store.grant(name, "w", holder=ALICE_ID, request_id="r")).replayed
    await store.release(alice.external_id, holder=ALICE_ID)
    with pytest.raises(LeaseGone):
        await store.grant(name, "w", holder=ALICE_ID, request_id="r")
    # Mallory's lease under the same id is untouched by the end of Alice's.
    assert (await store.grant(name, "w", holder=MALLORY_ID, request_id="r")).replayed


MAX_WAITERS = 20  # so each token may have per_token_cap(20) == 2 waits


async def test_one_tokens_waits_leave_room_for_another_tokens(
    valkey: EmbeddedValkey, prefix: str, new_name: Callable[[], str]
) -> None:
    name = new_name()
    cap = per_token_cap(MAX_WAITERS)
    settings = Settings(key_prefix=prefix, tokens=TOKENS, max_waiters=MAX_WAITERS)
    async with replica(valkey, settings) as served:
        http, waiters = served.http, served.store.waiters
        body = {"process_name": name, "key_set_size": 1, "lease_seconds": 60, "mode": "once"}
        assert (await http.post(API, json=body, headers=_as(ADMIN))).status_code == 201
        grant = {"process_name": name, "machine": "m"}
        held = await http.post(KEYS, json=grant, headers=_as(ADMIN))
        assert held.status_code == 201, held.text
        wait = {**grant, "wait_seconds": 30}
        queued = [
            asyncio.create_task(http.post(KEYS, json=wait, headers=_as(ALICE))) for _ in range(cap)
        ]
        await until(lambda: waiters.waiting == cap)

        # Alice is at her cap: her next waiting grant is 409 at once, her pass wait is
        # answered at once as the pass stands.
        started = time.monotonic()
        refused = await http.post(KEYS, json=wait, headers=_as(ALICE))
        assert_problem(refused, 409, "no_free_key")
        unfinished = await http.get(f"{API}/{name}/passes/1?wait_seconds=30", headers=_as(ALICE))
        assert unfinished.status_code == 200
        assert unfinished.json()["completed_at"] is None
        assert time.monotonic() - started < 5  # at once, not after the 30 s asked for

        # Mallory's grant and pass wait still wait (and count in the replica's cap).
        mallory = asyncio.create_task(http.post(KEYS, json=wait, headers=_as(MALLORY)))
        passing = asyncio.create_task(
            http.get(f"{API}/{name}/passes/1?wait_seconds=30", headers=_as(MALLORY))
        )
        await until(lambda: waiters.waiting == cap + 2)
        assert not mallory.done()
        assert not passing.done()

        # The key is handed on to each waiting grant in turn; the last one completes the
        # pass, which answers Mallory's pass wait.
        holder, grants = held.json()["external_id"], [*queued, mallory]
        for _ in grants:
            freed = f"{KEYS}/{holder}?outcome=interrupted"  # the pass goes on
            assert (await http.delete(freed, headers=_as(ADMIN))).status_code == 200
            done, _ = await asyncio.wait(
                [t for t in grants if not t.done()], return_when=asyncio.FIRST_COMPLETED
            )
            granted = done.pop().result()
            assert granted.status_code == 201, granted.text
            holder = granted.json()["external_id"]
        assert (await http.delete(f"{KEYS}/{holder}", headers=_as(ADMIN))).status_code == 200
        finished = await asyncio.wait_for(passing, 10)
        assert finished.json()["completed_at"] is not None


async def test_the_store_caps_pass_waits_per_holder_within_the_replicas_cap(
    valkey_redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(valkey_redis, prefix=prefix, max_waiters=MAX_WAITERS)
    name = new_name()
    await store.register(name, key_set_size=1, mode="once")
    lease = await store.grant(name, "w")
    cap = per_token_cap(MAX_WAITERS)
    try:
        alice = [
            asyncio.create_task(store.pass_info(name, 1, 30, holder=ALICE_ID)) for _ in range(cap)
        ]
        await until(lambda: store.waiters.waiting == cap)
        started = time.monotonic()
        assert not (await store.pass_info(name, 1, 30, holder=ALICE_ID)).complete
        assert time.monotonic() - started < 5
        mallory = asyncio.create_task(store.pass_info(name, 1, 30, holder=MALLORY_ID))
        await until(lambda: store.waiters.waiting == cap + 1)
        await store.release(lease.external_id)
        for done in await asyncio.wait_for(asyncio.gather(*alice, mallory), 10):
            assert done.complete
        assert store.waiters.waiting == 0
    finally:
        await store.aclose()


PASS_WAITS = 60


async def _commands(redis: Redis) -> int:
    """Commands the Valkey server has run, every client's, since it started."""
    stats = await redis.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


async def test_pass_waits_on_one_process_share_one_reader(
    valkey_redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(valkey_redis, prefix=prefix)
    name = new_name()
    await store.register(name, key_set_size=2, mode="once")
    first = await store.grant(name, "w")
    try:
        waits = [asyncio.create_task(store.pass_info(name, 1, 30)) for _ in range(PASS_WAITS)]
        await until(lambda: store.waiters.waiting == PASS_WAITS)
        assert store.pass_watch.readers == 1
        # Grants and releases write history entries that end no wait: nobody is woken for
        # them, and while the waits last the server runs a few reads a second, not one
        # round per wait (before: 8 blocked readers and 52 polls every 0.25 s, ~1,000 a second).
        await store.release((await store.grant(name, "w")).external_id, "failed")
        before = await _commands(valkey_redis)
        await asyncio.sleep(1)
        ran = await _commands(valkey_redis) - before
        assert ran < 20, ran
        assert not any(wait.done() for wait in waits)

        await store.release(first.external_id)
        await store.release((await store.grant(name, "w")).external_id)  # the pass completes
        answered = await asyncio.wait_for(asyncio.gather(*waits), 10)
        assert all(found.complete for found in answered)
        await until(lambda: store.pass_watch.readers == 0)
    finally:
        await store.aclose()
