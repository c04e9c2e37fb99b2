"""Only the holder of a lease (or an admin) ends or extends it; a scoped token learns nothing.

With API tokens on, a lease remembers the token it was granted to. Renew and release by any
other worker token answer 403 `not_lease_holder` and change nothing; admin tokens may renew,
release and revoke any lease. Each case runs on one replica and across two (two apps, two
clients, one Valkey), since replicas share nothing but Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.embedded import EmbeddedValkey
from tests.conftest import serve

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
KEYS = f"{API}/batch_keys"
ADMIN, ADMIN_LINE = new_token("admin")
ALICE, ALICE_LINE = new_token("worker")
BOB, BOB_LINE = new_token("worker")
SCOPED, SCOPED_LINE = new_token("worker", "mine-*")
TOKENS = ";".join((ADMIN_LINE, ALICE_LINE, BOB_LINE, SCOPED_LINE))


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=["one replica", "two replicas"])
async def replicas(
    request: pytest.FixtureRequest, valkey: EmbeddedValkey, prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(first, second): the same app twice, or two apps with their own Redis clients."""
    settings = Settings(key_prefix=prefix, tokens=TOKENS)
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(1 if request.param == "one replica" else 2):
            redis = connect(valkey.url, settings)
            stack.push_async_callback(redis.aclose)
            clients.append(
                await stack.enter_async_context(serve(create_app(settings, redis=redis)))
            )
        yield clients[0], clients[-1]


async def _lease(client: httpx.AsyncClient, name: str, token: str) -> dict[str, Any]:
    response = await client.post(
        KEYS, json={"process_name": name, "machine": "m"}, headers=_as(token)
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def _keys(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    response = await client.get(f"{KEYS}/{name}", headers=_as(ADMIN))
    assert response.status_code == 200
    keys: list[dict[str, Any]] = response.json()
    return keys


async def _register(client: httpx.AsyncClient, name: str, size: int = 2) -> None:
    body = {"process_name": name, "key_set_size": size, "lease_seconds": 60}
    assert (await client.post(API, json=body, headers=_as(ADMIN))).status_code == 201


async def test_another_worker_can_neither_renew_nor_release(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], new_name: Callable[[], str]
) -> None:
    first, second = replicas
    name = new_name()
    await _register(first, name)
    lease = await _lease(first, name, ALICE)
    before = await _keys(second, name)
    stranger_calls = [
        second.patch(
            f"{KEYS}/{lease['external_id']}", json={"lease_seconds": 86_400}, headers=_as(BOB)
        ),
        second.delete(f"{KEYS}/{lease['external_id']}", headers=_as(BOB)),
        second.delete(f"{KEYS}/{lease['external_id']}?outcome=failed", headers=_as(BOB)),
    ]
    for call in stranger_calls:
        response = await call
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == "application/problem+json"
    # The scoped token is told the lease is unknown (outside its scope, as if never granted).
    response = await second.patch(f"{KEYS}/{lease['external_id']}", headers=_as(SCOPED))
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "unknown_lease"
    # Nothing changed: same holder, same expiry, no completion stamped.
    assert await _keys(second, name) == before
    # The holder renews and releases through either replica.
    renewed = await second.patch(f"{KEYS}/{lease['external_id']}", headers=_as(ALICE))
    assert renewed.status_code == 200
    released = await first.delete(f"{KEYS}/{lease['external_id']}", headers=_as(ALICE))
    assert released.status_code == 200
    assert released.json()["last_completed_at"] is not None


async def test_the_stranger_gets_not_lease_holder(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], new_name: Callable[[], str]
) -> None:
    first, second = replicas
    name = new_name()
    await _register(first, name)
    lease = await _lease(first, name, ALICE)
    response = await second.delete(f"{KEYS}/{lease['external_id']}", headers=_as(BOB))
    assert response.status_code == 403
    assert response.json()["code"] == "not_lease_holder"
    assert "holder" in response.json()["detail"]


async def test_an_admin_may_renew_release_and_revoke_any_lease(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], new_name: Callable[[], str]
) -> None:
    first, second = replicas
    name = new_name()
    await _register(first, name, size=3)
    one, two, three = [await _lease(first, name, ALICE) for _ in range(3)]
    assert (
        await second.patch(f"{KEYS}/{one['external_id']}", headers=_as(ADMIN))
    ).status_code == 200
    assert (
        await second.delete(f"{KEYS}/{one['external_id']}", headers=_as(ADMIN))
    ).status_code == 200
    revoked = await second.post(f"{KEYS}/{two['external_id']}/revoke", headers=_as(ADMIN))
    assert revoked.status_code == 200
    # A worker cannot revoke at all, even its own lease.
    own = await second.post(f"{KEYS}/{three['external_id']}/revoke", headers=_as(ALICE))
    assert own.status_code == 403
    # An admin's own lease is the admin's: a worker cannot end it either.
    await first.delete(f"{KEYS}/{three['external_id']}", headers=_as(ALICE))
    admins = await _lease(first, name, ADMIN)
    refused = await second.delete(f"{KEYS}/{admins['external_id']}", headers=_as(BOB))
    assert refused.json()["code"] == "not_lease_holder"


async def test_workers_sharing_a_token_are_one_holder(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], new_name: Callable[[], str]
) -> None:
    first, second = replicas
    name = new_name()
    await _register(first, name)
    lease = await _lease(first, name, ALICE)  # "machine A" with Alice's token
    # "machine B" holds the same token: it is the same identity.
    response = await second.delete(f"{KEYS}/{lease['external_id']}", headers=_as(ALICE))
    assert response.status_code == 200


async def test_a_scoped_token_gets_the_same_answer_for_any_other_name_or_lease(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], new_name: Callable[[], str]
) -> None:
    first, second = replicas
    existing, missing = new_name(), new_name()
    await _register(first, existing)
    lease = await _lease(first, existing, ALICE)
    ended = await _lease(first, existing, ALICE)
    await first.delete(f"{KEYS}/{ended['external_id']}", headers=_as(ALICE))
    unknown_id = "00000000-0000-8000-8000-000000000001"
    for name in (existing, missing):
        calls = [
            second.get(f"{KEYS}/{name}", headers=_as(SCOPED)),
            second.get(f"{API}/{name}/events", headers=_as(SCOPED)),
            second.post(KEYS, json={"process_name": name, "machine": "m"}, headers=_as(SCOPED)),
        ]
        statuses = [(await call).status_code for call in calls]
        assert statuses == [403, 403, 403], name
    for external_id in (lease["external_id"], ended["external_id"], unknown_id):
        for call in (
            second.patch(f"{KEYS}/{external_id}", headers=_as(SCOPED)),
            second.delete(f"{KEYS}/{external_id}", headers=_as(SCOPED)),
        ):
            response = await call
            # As a lease never granted: 404, whether the lease or its process exists.
            assert response.status_code == 404, (external_id, response.text)
            assert response.json()["code"] == "unknown_lease"


async def test_with_no_tokens_anyone_may_renew_and_release(
    client: httpx.AsyncClient, redis: Redis, new_name: Callable[[], str]
) -> None:
    name = new_name()
    assert (await client.post(API, json={"process_name": name})).status_code == 201
    granted = await client.post(KEYS, json={"process_name": name, "machine": "a"})
    external_id = granted.json()["external_id"]
    assert (await client.patch(f"{KEYS}/{external_id}")).status_code == 200
    assert (await client.delete(f"{KEYS}/{external_id}")).status_code == 200
