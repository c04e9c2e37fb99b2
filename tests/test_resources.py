"""Resources you can GET: a process, one key, and every Location header pointing at one of them
(spec/runs.md, "Keys")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from coordinator import validation
from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from coordinator.errors import InvalidField, UnknownKey, UnknownProcess
from coordinator.store import Store
from tests.conftest import Register, serve
from tests.test_api_errors import API, assert_free, assert_invalid_field, assert_key, assert_problem

pytestmark = pytest.mark.anyio

ADMIN, ADMIN_LINE = new_token("admin")
LIMITED, LIMITED_LINE = new_token("worker", "mine-*")


async def _grant(client: httpx.AsyncClient, name: str) -> httpx.Response:
    response = await client.post(
        f"{API}/process/batch_keys", json={"process_name": name, "machine": "m"}
    )
    assert response.status_code == 201, response.text
    return response


# --- GET /api/v1/process/<name> ----------------------------------------------------------


async def test_the_location_of_a_registration_answers_get(
    client: httpx.AsyncClient, new_name: Any
) -> None:
    name = new_name()
    registered = await client.post(
        f"{API}/process", json={"process_name": name, "key_set_size": 4, "lease_seconds": 90}
    )
    assert registered.status_code == 201, registered.text
    assert registered.headers["location"] == f"{API}/process/{name}"
    response = await client.get(registered.headers["location"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == registered.json()


async def test_an_unknown_process_is_404(client: httpx.AsyncClient, new_name: Any) -> None:
    name = new_name()
    body = assert_problem(await client.get(f"{API}/process/{name}"), 404, "unknown_process")
    assert name in body["detail"]
    assert_invalid_field(await client.get(f"{API}/process/-bad"), "process_name")


# --- GET /api/v1/process/<name>/keys/<key> -----------------------------------------------


async def test_the_location_of_a_grant_answers_get_with_its_key(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=3))["process_name"]
    await _grant(client, name)
    granted = await _grant(client, name)
    location = granted.headers["location"]
    assert location == f"{API}/process/{name}/keys/1"
    response = await client.get(location)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == granted.json()
    assert_key(response.json(), name)


async def test_a_key_reads_as_it_does_in_the_listing(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=3))["process_name"]
    held = (await _grant(client, name)).json()
    released = await client.delete(f"{API}/process/batch_keys/{held['external_id']}")
    assert released.status_code == 200
    await _grant(client, name)  # key 1
    listing = (await client.get(f"{API}/process/batch_keys/{name}")).json()
    for number in range(3):
        one = await client.get(f"{API}/process/{name}/keys/{number}")
        assert one.status_code == 200, one.text
        # The key's own resource adds its checkpoint, which listings leave out.
        assert one.json().pop("checkpoint") is None
        assert {k: v for k, v in one.json().items() if k != "checkpoint"} == listing[number]
    completed = (await client.get(f"{API}/process/{name}/keys/0")).json()
    assert_free(completed)
    assert completed["last_completed_at"] == released.json()["last_completed_at"]


@pytest.mark.parametrize("key", ["3", "-1", "1099511627776", "99999999999999999999"])
async def test_a_key_outside_the_key_space_is_404_unknown_key(
    client: httpx.AsyncClient, register: Register, key: str
) -> None:
    name = (await register(key_set_size=3))["process_name"]
    body = assert_problem(await client.get(f"{API}/process/{name}/keys/{key}"), 404, "unknown_key")
    assert name in body["detail"]
    assert "0 to 2" in body["detail"]


async def test_an_unknown_process_comes_before_an_unknown_key(
    client: httpx.AsyncClient, new_name: Any
) -> None:
    for key in ("0", "-1", "1099511627776"):
        response = await client.get(f"{API}/process/{new_name()}/keys/{key}")
        assert_problem(response, 404, "unknown_process")


@pytest.mark.parametrize("key", ["one", "1.5", "0x1", "+1", "1e3", "123456789012345678901"])
async def test_a_key_that_is_not_an_integer_is_422(
    client: httpx.AsyncClient, register: Register, key: str
) -> None:
    name = (await register(key_set_size=3))["process_name"]
    assert_invalid_field(await client.get(f"{API}/process/{name}/keys/{key}"), "key")


async def test_the_store_reads_one_key(store: Store, new_name: Any) -> None:
    name = new_name()
    await store.register(name, 5)
    granted = await store.grant(name, "m")
    assert await store.batch_key(name, granted.key) == granted
    assert await store.batch_key(name, 4) == (await store.batch_keys(name))[4]
    for key in (5, -1, validation.KEY_MAX + 1):
        with pytest.raises(UnknownKey) as caught:
            await store.batch_key(name, key)
        assert (caught.value.process_name, caught.value.key) == (name, key)
        assert caught.value.code == "unknown_key"
    with pytest.raises(UnknownProcess):
        await store.batch_key(new_name(), -1)
    with pytest.raises(InvalidField):
        await store.batch_key(name, True)


# --- tokens ------------------------------------------------------------------------------


@pytest.fixture
async def guarded(redis: Redis, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(key_prefix=prefix, tokens=f"{ADMIN_LINE}\n{LIMITED_LINE}")
    async with serve(create_app(settings, redis=redis)) as client:
        yield client


async def test_a_scoped_token_gets_only_its_processes_and_keys(
    guarded: httpx.AsyncClient,
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    limited = {"Authorization": f"Bearer {LIMITED}"}
    for name in ("mine-1", "theirs"):
        created = await guarded.post(f"{API}/process", json={"process_name": name}, headers=admin)
        assert created.status_code == 201
    assert (await guarded.get(f"{API}/process/mine-1", headers=limited)).status_code == 200
    assert (await guarded.get(f"{API}/process/mine-1/keys/0", headers=limited)).status_code == 200
    for path in (f"{API}/process/theirs", f"{API}/process/theirs/keys/0"):
        assert_problem(await guarded.get(path, headers=limited), 403, "forbidden")
        assert (await guarded.get(path, headers=admin)).status_code == 200
    # A name outside the scope is refused alike whether it exists or not.
    assert_problem(await guarded.get(f"{API}/process/nobody", headers=limited), 403, "forbidden")
    assert_problem(await guarded.get(f"{API}/process/mine-1"), 401, "unauthorized")


# --- /openapi.json -----------------------------------------------------------------------


async def test_the_document_describes_both_resources(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    process = paths["/api/v1/process/{process_name}"]["get"]
    assert process["operationId"] == "getProcess"
    assert set(process["responses"]) >= {"200", "403", "404", "422", "503"}
    key = paths["/api/v1/process/{process_name}/keys/{key}"]["get"]
    assert key["operationId"] == "getBatchKey"
    schemas = {p["name"]: p["schema"] for p in key["parameters"]}
    assert schemas["key"] == {"type": "integer", "minimum": 0, "maximum": validation.KEY_MAX}
    assert "`unknown_key`" in key["responses"]["404"]["description"]
    grant = paths["/api/v1/process/batch_keys"]["post"]["responses"]["201"]
    assert "/keys/{key}" in grant["headers"]["Location"]["description"]
