"""Scoped tokens cannot use one another's request ids, waits or pollers.

A `request_id` is bound to the holder that sent it: another token replaying it is a request of
its own (a new lease, never the first holder's lease, checkpoint or end). Waiting grants and pass
waits are capped per token and still counted in the replica's cap, so one team cannot fill the
replica. Pass waits on one process share one history reader, however many there are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import httpx
import pytest

from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.embedded import EmbeddedValkey
from coordinator.errors import LeaseGone
from coordinator.store import Store
from tests.conftest import serve
from tests.test_api_errors import assert_problem

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
