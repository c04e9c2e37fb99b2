"""HTTP routes of processes: register, list, delete (spec/api.md, "Process")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from redis.asyncio import Redis

from coordinator.app import create_app
from coordinator.config import Settings
from tests.conftest import Register, serve
from tests.test_api_errors import (
    API,
    assert_free,
    assert_invalid_field,
    assert_key,
    assert_problem,
    parse_time,
)

pytestmark = pytest.mark.anyio


async def _keys(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/process/batch_keys/{name}")
    assert response.status_code == 200, response.text
    keys: list[dict[str, Any]] = response.json()
    return keys


async def _grant(client: httpx.AsyncClient, name: str, machine: str = "m") -> dict[str, Any]:
    response = await client.post(
        f"{API}/process/batch_keys", json={"process_name": name, "machine": machine}
    )
    assert response.status_code == 201, response.text
    key: dict[str, Any] = response.json()
    return key


async def _names(client: httpx.AsyncClient) -> list[str]:
    response = await client.get(f"{API}/process")
    assert response.status_code == 200
    return [p["process_name"] for p in response.json()]


# --- POST /api/v1/process -------------------------------------------------------------


async def test_register_answers_201_with_defaults_and_location(
    client: httpx.AsyncClient, new_name: Callable[[], str]
) -> None:
    name = new_name()
    response = await client.post(f"{API}/process", json={"process_name": name})
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    started = body.pop("pass")
    assert body == {
        "process_name": name,
        "key_set_size": 10,
        "key_space_size": 10,
        "lease_seconds": 3600,
        # Batch runs' options, at the seed's behaviour unless asked for.
        "mode": "rotate",
        "max_attempts": None,
        "retry_backoff_seconds": 0,
        "max_failed_keys": None,
    }
    assert {**started, "started_at": None} == {
        "number": 1,
        "started_at": None,
        "completed_at": None,
        "keys_done": 0,
        "keys_quarantined": 0,
        "failed": False,
    }
    assert response.headers["location"] == f"{API}/process/{name}"


async def test_register_default_key_set_has_ten_free_keys(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    keys = await _keys(client, name)
    assert [k["key"] for k in keys] == list(range(10))
    for key in keys:
        assert_key(key, name)
        assert_free(key)


async def test_register_default_lease_is_3600_seconds_per_grant(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    key = await _grant(client, name)
    length = parse_time(key["expires_at"]) - parse_time(key["started_at"])
    assert length.total_seconds() == 3600


@pytest.mark.parametrize("size", [1, 3, 25])
async def test_register_honours_key_set_size(
    client: httpx.AsyncClient, register: Register, size: int
) -> None:
    process = await register(key_set_size=size)
    assert process["key_set_size"] == size
    assert process["key_space_size"] == size
    keys = await _keys(client, process["process_name"])
    assert [k["key"] for k in keys] == list(range(size))


@pytest.mark.parametrize("lease", [1, 90, 86_400])
async def test_register_honours_lease_seconds(
    client: httpx.AsyncClient, register: Register, lease: int
) -> None:
    process = await register(lease_seconds=lease)
    assert process["lease_seconds"] == lease
    key = await _grant(client, process["process_name"])
    length = parse_time(key["expires_at"]) - parse_time(key["started_at"])
    assert length.total_seconds() == lease


@pytest.mark.parametrize(
    "name",
    ["a", "Z", "7", "a" * 128, "a.b_c:d-e", "9-._:", "nightly-invoices", "batch_keys.2"],
)
async def test_register_accepts_every_valid_name_form(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post(f"{API}/process", json={"process_name": name, "key_set_size": 2})
    assert response.status_code == 201, response.text
    assert response.json()["process_name"] == name
    location = response.headers["location"]
    assert unquote(location) == f"{API}/process/{name}"
    assert await _names(client) == [name]
    assert [k["key"] for k in await _keys(client, name)] == [0, 1]
    # The Location names the process: DELETE there removes it.
    deleted = await client.delete(location)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == response.json()
    assert await _names(client) == []


async def test_register_duplicate_is_409_and_keeps_the_first(
    client: httpx.AsyncClient, register: Register
) -> None:
    process = await register(key_set_size=3, lease_seconds=60)
    name = process["process_name"]
    key = await _grant(client, name)
    response = await client.post(
        f"{API}/process", json={"process_name": name, "key_set_size": 7, "lease_seconds": 5}
    )
    body = assert_problem(response, 409, "process_exists")
    assert name in body["detail"]
    assert (await client.get(f"{API}/process")).json() == [process]
    keys = await _keys(client, name)
    assert [k["key"] for k in keys] == [0, 1, 2]
    # The live lease survived the refused registration.
    assert keys[0] == {k: v for k, v in key.items() if k != "checkpoint"}


async def test_concurrent_duplicate_registrations_leave_exactly_one_whole_process(
    client: httpx.AsyncClient,
) -> None:
    sizes = list(range(1, 9))
    responses = await asyncio.gather(
        *(
            client.post(f"{API}/process", json={"process_name": "racy", "key_set_size": size})
            for size in sizes
        )
    )
    winners = [r for r in responses if r.status_code == 201]
    assert len(winners) == 1, [r.text for r in responses]
    for response in responses:
        if response.status_code != 201:
            assert_problem(response, 409, "process_exists")
    winner = winners[0].json()
    assert (await client.get(f"{API}/process")).json() == [winner]
    keys = await _keys(client, "racy")
    assert [k["key"] for k in keys] == list(range(winner["key_set_size"]))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "process_name"),
        ({"key_set_size": 3}, "process_name"),
        ({"process_name": None}, "process_name"),
        ({"process_name": 5}, "process_name"),
        ({"process_name": True}, "process_name"),
        ({"process_name": ["a"]}, "process_name"),
        ({"process_name": "ok", "key_set_size": 0}, "key_set_size"),
        ({"process_name": "ok", "key_set_size": -1}, "key_set_size"),
        ({"process_name": "ok", "key_set_size": True}, "key_set_size"),
        ({"process_name": "ok", "key_set_size": False}, "key_set_size"),
        ({"process_name": "ok", "key_set_size": 1.5}, "key_set_size"),
        ({"process_name": "ok", "key_set_size": 10.0}, "key_set_size"),
        ({"process_name": "ok", "key_set_size": "10"}, "key_set_size"),
        ({"process_name": "ok", "key_set_size": [10]}, "key_set_size"),
        ({"process_name": "ok", "key_set_size": 2**63}, "key_set_size"),
        ({"process_name": "ok", "key_set_size": 1_000_001}, "key_set_size"),
        ({"process_name": "ok", "lease_seconds": 0}, "lease_seconds"),
        ({"process_name": "ok", "lease_seconds": -1}, "lease_seconds"),
        ({"process_name": "ok", "lease_seconds": 86_401}, "lease_seconds"),
        ({"process_name": "ok", "lease_seconds": "x"}, "lease_seconds"),
        ({"process_name": "ok", "lease_seconds": "60"}, "lease_seconds"),
        ({"process_name": "ok", "lease_seconds": True}, "lease_seconds"),
        ({"process_name": "ok", "lease_seconds": 1.5}, "lease_seconds"),
        ({"process_name": "ok", "colour": "red"}, "colour"),
        ({"process_name": "ok", "key_space_size": 10}, "key_space_size"),
        ({"process_name": "ok", "machine": "m"}, "machine"),
    ],
)
async def test_register_rejects_invalid_fields_with_422(
    client: httpx.AsyncClient, redis: Redis, prefix: str, body: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{API}/process", json=body)
    assert_invalid_field(response, field)
    assert await _names(client) == []
    assert await redis.keys(f"{prefix}*") == []


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 129,
        "a b",
        " a",
        "a ",
        "a/b",
        "/a",
        "a\\b",
        "{a}",
        "a{b",
        "a}b",
        "*",
        "a*",
        "a?",
        "a[b]",
        "a\nb",
        "abc\n",
        "a\rb",
        "a\tb",
        "a\x00b",
        "a\x7f",
        "prozeß",
        "é",
        "日本",
        "a\u200bb",
        "١٢٣",
        "-abc",
        ".abc",
        "_abc",
        ":abc",
        "a%2Fb",
        "a|b",
        "a,b",
    ],
)
async def test_register_rejects_invalid_names_with_422(
    client: httpx.AsyncClient, redis: Redis, prefix: str, name: str
) -> None:
    response = await client.post(f"{API}/process", json={"process_name": name})
    assert_invalid_field(response, "process_name")
    assert await _names(client) == []
    # Nothing was written, under this prefix or (for names meant to escape it) anywhere
    # the name could have reached.
    assert await redis.keys(f"{prefix}*") == []


@pytest.fixture
async def small_max(redis: Redis, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app configured with a maximum of 5 keys per process."""
    app = create_app(Settings(key_prefix=prefix, max_key_set_size=5), redis=redis)
    async with serve(app) as http:
        yield http


async def test_register_honours_the_configured_maximum(small_max: httpx.AsyncClient) -> None:
    response = await small_max.post(f"{API}/process", json={"process_name": "p", "key_set_size": 5})
    assert response.status_code == 201, response.text
    assert response.json()["key_set_size"] == 5
    response = await small_max.post(f"{API}/process", json={"process_name": "q", "key_set_size": 6})
    assert_invalid_field(response, "key_set_size")
    assert "5" in response.json()["detail"]
    assert await _names(small_max) == ["p"]


async def test_the_default_size_never_exceeds_a_smaller_maximum(
    small_max: httpx.AsyncClient,
) -> None:
    response = await small_max.post(f"{API}/process", json={"process_name": "d"})
    assert response.status_code == 201, response.text
    assert response.json()["key_set_size"] == 5


async def test_register_accepts_the_default_maximum_of_a_million(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        f"{API}/process", json={"process_name": "huge", "key_set_size": 1_000_000}
    )
    assert response.status_code == 201, response.text
    assert response.json()["key_space_size"] == 1_000_000
    key = await _grant(client, "huge")
    assert key["key"] == 0


# --- GET /api/v1/process --------------------------------------------------------------


async def test_list_is_empty_when_none_are_registered(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/process")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == []


async def test_list_is_sorted_by_name_with_full_objects(client: httpx.AsyncClient) -> None:
    names = ["b", "a", "B", "9", "a-b", "a.b", "a:b", "a_b", "aa", "A0", "10", "2"]
    registered = {}
    for size, name in enumerate(names, start=1):
        response = await client.post(
            f"{API}/process",
            json={"process_name": name, "key_set_size": size, "lease_seconds": 100 + size},
        )
        assert response.status_code == 201, response.text
        registered[name] = response.json()
    response = await client.get(f"{API}/process")
    assert response.status_code == 200
    listed = response.json()
    assert [p["process_name"] for p in listed] == sorted(names)
    assert listed == [registered[name] for name in sorted(names)]


async def test_list_drops_a_deleted_process(client: httpx.AsyncClient, register: Register) -> None:
    first = await register()
    second = await register()
    assert (await client.delete(f"{API}/process/{first['process_name']}")).status_code == 200
    assert (await client.get(f"{API}/process")).json() == [second]


# --- DELETE /api/v1/process/<process_name> --------------------------------------------


async def test_delete_answers_the_process_as_it_was(
    client: httpx.AsyncClient, register: Register
) -> None:
    process = await register(key_set_size=4, lease_seconds=77)
    response = await client.delete(f"{API}/process/{process['process_name']}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == process


async def test_delete_of_an_unknown_process_is_404(
    client: httpx.AsyncClient, new_name: Callable[[], str]
) -> None:
    name = new_name()
    body = assert_problem(await client.delete(f"{API}/process/{name}"), 404, "unknown_process")
    assert name in body["detail"]


async def test_delete_twice_is_404_the_second_time(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    assert (await client.delete(f"{API}/process/{name}")).status_code == 200
    assert_problem(await client.delete(f"{API}/process/{name}"), 404, "unknown_process")


@pytest.mark.parametrize("name", ["-abc", "a%20b", "a%7Bb%7D", "%2A", "a" * 129])
async def test_delete_of_an_invalid_name_is_422(client: httpx.AsyncClient, name: str) -> None:
    assert_invalid_field(await client.delete(f"{API}/process/{name}"), "process_name")


async def test_delete_of_a_process_named_batch_keys(client: httpx.AsyncClient) -> None:
    """The name is a route word, so it cannot be registered (tests/test_route_words.py); its
    DELETE still routes to the process, for one an older version registered."""
    response = await client.post(f"{API}/process", json={"process_name": "batch_keys"})
    assert_invalid_field(response, "process_name")
    assert await _names(client) == []
    response = await client.delete(f"{API}/process/batch_keys")
    assert_problem(response, 404, "unknown_process")


async def test_delete_makes_the_process_unknown_everywhere(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=2))["process_name"]
    await _grant(client, name)
    assert (await client.delete(f"{API}/process/{name}")).status_code == 200
    assert_problem(await client.get(f"{API}/process/batch_keys/{name}"), 404, "unknown_process")
    response = await client.post(
        f"{API}/process/batch_keys", json={"process_name": name, "machine": "m"}
    )
    assert_problem(response, 404, "unknown_process")
    assert name not in await _names(client)


async def test_delete_ends_every_lease_with_410(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=3))["process_name"]
    leases = [await _grant(client, name, f"w{i}") for i in range(2)]
    assert (await client.delete(f"{API}/process/{name}")).status_code == 200
    for lease in leases:
        url = f"{API}/process/batch_keys/{lease['external_id']}"
        assert_problem(await client.patch(url), 410, "lease_gone")
        assert_problem(await client.patch(url, json={"lease_seconds": 10}), 410, "lease_gone")
        assert_problem(await client.delete(url), 410, "lease_gone")
        assert_problem(await client.delete(url, params={"outcome": "failed"}), 410, "lease_gone")


async def test_re_registering_starts_afresh_and_fencing_tokens_keep_rising(
    client: httpx.AsyncClient, register: Register
) -> None:
    process = await register(key_set_size=3)
    name = process["process_name"]
    old = [await _grant(client, name) for _ in range(3)]
    done = await client.delete(f"{API}/process/batch_keys/{old[0]['external_id']}")
    assert done.status_code == 200
    old.append(await _grant(client, name))  # key 0 again, a fourth token
    old_tokens = [lease["fencing_token"] for lease in old]
    assert old_tokens == sorted(set(old_tokens))

    assert (await client.delete(f"{API}/process/{name}")).status_code == 200
    response = await client.post(f"{API}/process", json={"process_name": name, "key_set_size": 2})
    assert response.status_code == 201, response.text

    # A new key space: nothing held, nothing completed, key 0 first.
    keys = await _keys(client, name)
    assert [k["key"] for k in keys] == [0, 1]
    for key in keys:
        assert_free(key)
        assert key["last_completed_at"] is None
    new = await _grant(client, name)
    assert new["key"] == 0
    assert new["fencing_token"] > max(old_tokens)
    assert new["external_id"] not in {lease["external_id"] for lease in old}
    # The old leases stay ended under the new registration.
    for lease in old:
        url = f"{API}/process/batch_keys/{lease['external_id']}"
        assert_problem(await client.patch(url), 410, "lease_gone")
        assert_problem(await client.delete(url), 410, "lease_gone")
    # ... and the new one is live.
    renewed = await client.patch(f"{API}/process/batch_keys/{new['external_id']}")
    assert renewed.status_code == 200, renewed.text
