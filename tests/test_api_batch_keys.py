"""HTTP routes of batch keys: list, request, renew, release, expiry (spec/api.md, "Batch keys")."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import httpx
import pytest

from coordinator import lease_id
from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.models import from_rfc3339
from tests.conftest import FakeClock, Register, serve
from tests.test_api_errors import (
    API,
    KEY_FIELDS,
    assert_free,
    assert_invalid_field,
    assert_key,
    assert_problem,
    parse_time,
)

pytestmark = pytest.mark.anyio

KEYS = f"{API}/process/batch_keys"
TOKEN_EPOCH_US = 1_767_225_600_000_000  # grant.lua: tokens count microseconds from 2026-01-01


def _next_token(previous: int, granted: dict[str, Any]) -> int:
    """The token grant.lua issues after `previous`, at the Redis TIME `granted` started."""
    started_us = from_rfc3339(granted["started_at"])
    assert started_us is not None
    return max(previous + 1, started_us - TOKEN_EPOCH_US)


async def _keys(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    response = await client.get(f"{KEYS}/{name}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    keys: list[dict[str, Any]] = response.json()
    for key in keys:
        assert_key(key, name)
    return keys


async def _request(
    client: httpx.AsyncClient, name: str, machine: str = "worker", **fields: Any
) -> httpx.Response:
    return await client.post(KEYS, json={"process_name": name, "machine": machine, **fields})


async def _grant(
    client: httpx.AsyncClient, name: str, machine: str = "worker", **fields: Any
) -> dict[str, Any]:
    response = await _request(client, name, machine, **fields)
    assert response.status_code == 201, response.text
    key: dict[str, Any] = response.json()
    assert_key(key, name)
    # A grant carries the key's checkpoint; listings do not: compare the rest with them.
    assert "checkpoint" in key
    del key["checkpoint"]
    return key


async def _release(
    client: httpx.AsyncClient, external_id: str, outcome: str | None = None
) -> dict[str, Any]:
    params = {} if outcome is None else {"outcome": outcome}
    response = await client.delete(f"{KEYS}/{external_id}", params=params)
    assert response.status_code == 200, response.text
    key: dict[str, Any] = response.json()
    return key


async def _renew(
    client: httpx.AsyncClient, external_id: str, lease_seconds: int | None = None
) -> dict[str, Any]:
    if lease_seconds is None:
        response = await client.patch(f"{KEYS}/{external_id}")
    else:
        response = await client.patch(
            f"{KEYS}/{external_id}", json={"lease_seconds": lease_seconds}
        )
    assert response.status_code == 200, response.text
    key: dict[str, Any] = response.json()
    return key


def _seconds(later: str, earlier: str) -> float:
    return (parse_time(later) - parse_time(earlier)).total_seconds()


# --- GET /api/v1/process/batch_keys/<process_name> ------------------------------------


async def test_list_of_a_fresh_process_is_every_key_free(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=3))["process_name"]
    keys = await _keys(client, name)
    assert keys == [
        {
            "external_id": None,
            "key": key,
            "last_completed_at": None,
            "machine": None,
            "process_name": name,
            "started_at": None,
            "expires_at": None,
            "fencing_token": None,
            "attempts": 0,
            "state": "free",
            "retry_at": None,
        }
        for key in range(3)
    ]


async def test_list_shows_held_completed_and_free_keys(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=4))["process_name"]
    held = await _grant(client, name, "w-held")
    done = await _grant(client, name, "w-done")
    released = await _release(client, done["external_id"])
    keys = await _keys(client, name)
    assert [k["key"] for k in keys] == [0, 1, 2, 3]
    # A held key reads exactly as it was granted.
    assert keys[0] == held
    assert_free(keys[1])
    assert keys[1]["last_completed_at"] == released["last_completed_at"] is not None
    for key in keys[2:]:
        assert_free(key)
        assert key["last_completed_at"] is None


async def test_list_spans_more_than_one_read_chunk(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=2_345))["process_name"]
    first = await _grant(client, name)
    keys = await _keys(client, name)
    assert [k["key"] for k in keys] == list(range(2_345))
    assert keys[0] == first
    assert all(k["external_id"] is None for k in keys[1:])


async def test_list_of_an_unknown_process_is_404(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get(f"{KEYS}/never-registered"), 404, "unknown_process")
    assert "never-registered" in body["detail"]


@pytest.mark.parametrize("name", ["-x", "a%20b", "%7Bx%7D", "a" * 129])
async def test_list_with_an_invalid_name_is_422(client: httpx.AsyncClient, name: str) -> None:
    assert_invalid_field(await client.get(f"{KEYS}/{name}"), "process_name")


# --- POST /api/v1/process/batch_keys --------------------------------------------------


async def test_request_answers_201_with_the_granted_key(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    response = await _request(client, name, "worker-7")
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    key = response.json()
    assert set(key) == KEY_FIELDS | {"checkpoint"}
    assert_key(key, name)
    assert key["key"] == 0
    assert key["machine"] == "worker-7"
    assert key["process_name"] == name
    assert key["last_completed_at"] is None
    assert isinstance(key["fencing_token"], int)
    # The process's first grant: its token is the microseconds since the token epoch.
    assert key["fencing_token"] == _next_token(0, key)
    uuid.UUID(key["external_id"])
    assert _seconds(key["expires_at"], key["started_at"]) == 3600
    started = parse_time(key["started_at"])
    assert abs(datetime.now(UTC) - started) < timedelta(minutes=5)
    assert response.headers["location"] == f"{API}/process/{name}/keys/{key['key']}"


async def test_the_location_of_a_grant_is_its_key(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    response = await _request(client, name)
    location = response.headers["location"]
    read = await client.get(location)
    assert read.status_code == 200, read.text
    assert read.json() == response.json()


async def test_a_fresh_process_hands_out_keys_in_order_then_409(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=5, lease_seconds=120))["process_name"]
    granted = [await _grant(client, name, f"w{i}") for i in range(5)]
    assert [k["key"] for k in granted] == [0, 1, 2, 3, 4]
    assert len({k["external_id"] for k in granted}) == 5
    tokens = [k["fencing_token"] for k in granted]
    assert tokens == sorted(set(tokens))
    for previous, key in zip([0, *tokens[:-1]], granted, strict=True):
        assert key["fencing_token"] == _next_token(previous, key)

    response = await _request(client, name)
    body = assert_problem(response, 409, "no_free_key")
    assert name in body["detail"]
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 120
    # The refused request changed nothing.
    assert [k["external_id"] for k in await _keys(client, name)] == [
        k["external_id"] for k in granted
    ]


async def test_request_for_an_unknown_process_is_404(client: httpx.AsyncClient) -> None:
    body = assert_problem(await _request(client, "never-registered"), 404, "unknown_process")
    assert "never-registered" in body["detail"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"process_name": "P"}, "machine"),
        ({"process_name": "P", "machine": None}, "machine"),
        ({"process_name": "P", "machine": ""}, "machine"),
        ({"process_name": "P", "machine": "m" * 257}, "machine"),
        ({"process_name": "P", "machine": 7}, "machine"),
        ({"process_name": "P", "machine": True}, "machine"),
        ({"process_name": "P", "machine": ["m"]}, "machine"),
        ({"process_name": "P", "machine": {"m": 1}}, "machine"),
        ({"machine": "m"}, "process_name"),
        ({"process_name": 3, "machine": "m"}, "process_name"),
        ({"process_name": "a b", "machine": "m"}, "process_name"),
        ({"process_name": "{P}", "machine": "m"}, "process_name"),
        ({"process_name": "P", "machine": "m", "lease_seconds": 0}, "lease_seconds"),
        ({"process_name": "P", "machine": "m", "lease_seconds": 86_401}, "lease_seconds"),
        ({"process_name": "P", "machine": "m", "lease_seconds": "x"}, "lease_seconds"),
        ({"process_name": "P", "machine": "m", "lease_seconds": True}, "lease_seconds"),
        ({"process_name": "P", "machine": "m", "lease_seconds": 2.5}, "lease_seconds"),
        ({"process_name": "P", "machine": "m", "key": 3}, "key"),
    ],
)
async def test_request_rejects_invalid_fields_with_422(
    client: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{API}/process", json={"process_name": "P", "key_set_size": 1})
    assert response.status_code == 201
    assert_invalid_field(await client.post(KEYS, json=fields), field)
    # Nothing was granted.
    assert_free((await _keys(client, "P"))[0])


async def test_a_machine_of_256_characters_is_accepted(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    machine = "m" * 256
    assert (await _grant(client, name, machine))["machine"] == machine


async def test_any_machine_string_round_trips(
    client: httpx.AsyncClient, register: Register
) -> None:
    """The lease record separates fields with `|`; a machine may hold anything."""
    name = (await register(key_set_size=2))["process_name"]
    machine = "host|7|8|9|-1|\n tab\t ünïcødé 🚀 \\ \" ' {x} *"
    key = await _grant(client, name, machine)
    assert key["machine"] == machine
    assert (await _keys(client, name))[0]["machine"] == machine
    assert (await _renew(client, key["external_id"], 30))["machine"] == machine
    released = await _release(client, key["external_id"])
    assert released["machine"] == machine
    assert released["key"] == 0


@pytest.mark.parametrize("lease", [1, 45, 86_400])
async def test_request_lease_seconds_sets_the_lease_length(
    client: httpx.AsyncClient, register: Register, lease: int
) -> None:
    name = (await register(lease_seconds=600))["process_name"]
    key = await _grant(client, name, lease_seconds=lease)
    assert _seconds(key["expires_at"], key["started_at"]) == lease
    # The next request without one takes the process's own length.
    plain = await _grant(client, name)
    assert _seconds(plain["expires_at"], plain["started_at"]) == 600


async def test_duplicate_machine_names_are_allowed(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=3))["process_name"]
    first = await _grant(client, name, "same")
    second = await _grant(client, name, "same")
    assert (first["key"], second["key"]) == (0, 1)
    assert first["external_id"] != second["external_id"]
    assert second["fencing_token"] > first["fencing_token"]
    # Each lease stays its own: releasing one leaves the other held.
    await _release(client, first["external_id"])
    keys = await _keys(client, name)
    assert_free(keys[0])
    assert keys[1] == second


async def test_sequential_cycles_visit_every_key_in_turn(
    client: httpx.AsyncClient, register: Register
) -> None:
    """The spec's example: 730 request/release cycles over 10 keys use each key 73 times."""
    name = (await register(key_set_size=10))["process_name"]
    seen = []
    last_token = 0
    for _ in range(730):
        key = await _grant(client, name)
        seen.append(key["key"])
        assert key["fencing_token"] > last_token
        last_token = key["fencing_token"]
        await _release(client, key["external_id"])
    assert seen == list(range(10)) * 73


async def test_a_completed_key_goes_to_the_back_and_a_failed_one_keeps_its_place(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=3))["process_name"]
    # A failed key is still the stalest: it comes straight back.
    k0 = await _grant(client, name)
    assert k0["key"] == 0
    await _release(client, k0["external_id"], "failed")
    again = await _grant(client, name)
    assert again["key"] == 0
    # Completed, it goes behind the never-completed keys 1 and 2.
    await _release(client, again["external_id"])
    assert (await _grant(client, name))["key"] == 1


async def test_keys_are_handed_out_stalest_completion_first(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=4))["process_name"]
    leases = {k["key"]: k for k in [await _grant(client, name) for _ in range(4)]}
    # Complete 2, then 0, then 3; fail 1 (never completed).
    for key, outcome in [(2, "completed"), (0, "completed"), (3, "completed"), (1, "failed")]:
        await _release(client, leases[key]["external_id"], outcome)
    order = [(await _grant(client, name))["key"] for _ in range(4)]
    assert order == [1, 2, 0, 3]


# --- PATCH /api/v1/process/batch_keys/<external_id> (renew) ---------------------------


async def test_renew_answers_the_lease_with_a_later_expiry(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    key = await _grant(client, name)
    response = await client.patch(f"{KEYS}/{key['external_id']}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    renewed = response.json()
    assert_key(renewed, name)
    assert parse_time(renewed["expires_at"]) > parse_time(key["expires_at"])
    unchanged = ("external_id", "key", "machine", "started_at", "fencing_token")
    assert {f: renewed[f] for f in unchanged} == {f: key[f] for f in unchanged}
    assert renewed["last_completed_at"] is None
    # The listing agrees.
    assert (await _keys(client, name))[0] == renewed


async def test_renew_with_lease_seconds_sets_expiry_from_now(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    key = await _grant(client, name)
    renewed = await _renew(client, key["external_id"], 30)
    # now + 30 s, where now is just after started_at (and far before the old 3600 s expiry).
    assert 30 <= _seconds(renewed["expires_at"], key["started_at"]) < 40
    assert parse_time(renewed["expires_at"]) < parse_time(key["expires_at"])
    longer = await _renew(client, key["external_id"], 86_400)
    assert 86_400 <= _seconds(longer["expires_at"], key["started_at"]) < 86_410


async def test_renew_without_lease_seconds_keeps_the_leases_own_length(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    key = await _grant(client, name, lease_seconds=50)
    renewed = await _renew(client, key["external_id"])
    assert 50 <= _seconds(renewed["expires_at"], key["started_at"]) < 60


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"", {}),
        (b"", {"content-type": "application/json"}),
        (b"{}", {"content-type": "application/json"}),
        (b"  \n", {"content-type": "application/json"}),
    ],
    ids=["empty", "empty-json", "empty-object", "whitespace"],
)
async def test_renew_accepts_an_empty_body(
    client: httpx.AsyncClient, register: Register, content: bytes, headers: dict[str, str]
) -> None:
    name = (await register())["process_name"]
    key = await _grant(client, name)
    response = await client.patch(f"{KEYS}/{key['external_id']}", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["external_id"] == key["external_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": 86_401}, "lease_seconds"),
        ({"lease_seconds": "x"}, "lease_seconds"),
        ({"lease_seconds": True}, "lease_seconds"),
        ({"lease_seconds": 1.5}, "lease_seconds"),
        ({"machine": "m"}, "machine"),
    ],
)
async def test_renew_rejects_invalid_fields_with_422(
    client: httpx.AsyncClient, register: Register, body: dict[str, Any], field: str
) -> None:
    name = (await register())["process_name"]
    key = await _grant(client, name)
    assert_invalid_field(await client.patch(f"{KEYS}/{key['external_id']}", json=body), field)
    assert (await _keys(client, name))[0] == key


def _unknown_ids(name: str, last_token: int) -> list[str]:
    return [
        "not-a-uuid",
        "12345",
        str(uuid.uuid4()),
        str(uuid.uuid4()).upper(),
        str(uuid.UUID(int=0)),
        str(lease_id.compose("never-registered-anywhere", 1)),
        # This process, tokens above its last one: never issued.
        str(lease_id.compose(name, last_token + 1)),
        str(lease_id.compose(name, last_token + 10**9)),
        str(lease_id.compose(name, lease_id.MAX_TOKEN)),
    ]


async def test_renew_and_release_of_ids_never_granted_are_404(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    granted = await _grant(client, name)
    for external_id in _unknown_ids(name, granted["fencing_token"]):
        url = f"{KEYS}/{external_id}"
        assert_problem(await client.patch(url), 404, "unknown_lease")
        assert_problem(await client.patch(url, json={"lease_seconds": 5}), 404, "unknown_lease")
        assert_problem(await client.delete(url), 404, "unknown_lease")
        assert_problem(await client.delete(url, params={"outcome": "failed"}), 404, "unknown_lease")
    # The live lease was untouched.
    assert (await _keys(client, name))[0]["external_id"] is not None


async def test_renew_after_release_is_410(client: httpx.AsyncClient, register: Register) -> None:
    name = (await register())["process_name"]
    key = await _grant(client, name)
    await _release(client, key["external_id"])
    body = assert_problem(await client.patch(f"{KEYS}/{key['external_id']}"), 410, "lease_gone")
    assert key["external_id"] in body["detail"]
    response = await client.patch(f"{KEYS}/{key['external_id']}", json={"lease_seconds": 9})
    assert_problem(response, 410, "lease_gone")
    assert_free((await _keys(client, name))[0])


async def test_renew_after_the_key_was_granted_again_is_410(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=1))["process_name"]
    old = await _grant(client, name)
    await _release(client, old["external_id"])
    new = await _grant(client, name)
    assert new["key"] == old["key"]
    assert_problem(await client.patch(f"{KEYS}/{old['external_id']}"), 410, "lease_gone")
    assert_problem(await client.delete(f"{KEYS}/{old['external_id']}"), 410, "lease_gone")
    # The old id did not touch the new lease.
    assert (await _keys(client, name))[0] == new


# --- DELETE /api/v1/process/batch_keys/<external_id> (release) ------------------------


@pytest.mark.parametrize("outcome", [None, "completed"])
async def test_release_completed_stamps_the_completion(
    client: httpx.AsyncClient, register: Register, outcome: str | None
) -> None:
    name = (await register(key_set_size=2))["process_name"]
    key = await _grant(client, name, "w-1")
    released = await _release(client, key["external_id"], outcome)
    assert_key(released, name)
    assert released["external_id"] == key["external_id"]
    assert released["machine"] == "w-1"
    assert released["started_at"] == key["started_at"]
    assert released["fencing_token"] == key["fencing_token"]
    assert released["key"] == key["key"]
    assert released["process_name"] == name
    assert released["expires_at"] is None
    assert released["last_completed_at"] is not None
    completed = parse_time(released["last_completed_at"])
    assert completed >= parse_time(key["started_at"])
    assert completed < parse_time(key["expires_at"])
    listed = (await _keys(client, name))[0]
    assert_free(listed)
    assert listed["last_completed_at"] == released["last_completed_at"]


async def test_release_failed_leaves_a_fresh_key_never_completed(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=2))["process_name"]
    key = await _grant(client, name)
    released = await _release(client, key["external_id"], "failed")
    assert released["last_completed_at"] is None
    assert released["expires_at"] is None
    assert released["external_id"] == key["external_id"]
    assert released["fencing_token"] == key["fencing_token"]
    assert released["started_at"] == key["started_at"]
    listed = (await _keys(client, name))[0]
    assert_free(listed)
    assert listed["last_completed_at"] is None


async def test_release_failed_keeps_an_earlier_completion(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=1))["process_name"]
    first = await _grant(client, name)
    completed = (await _release(client, first["external_id"]))["last_completed_at"]
    second = await _grant(client, name)
    assert second["last_completed_at"] == completed
    released = await _release(client, second["external_id"], "failed")
    assert released["last_completed_at"] == completed
    assert (await _keys(client, name))[0]["last_completed_at"] == completed


@pytest.mark.parametrize("outcome", ["bogus", "", "COMPLETED", "success"])
async def test_release_with_an_unknown_outcome_is_422_and_keeps_the_lease(
    client: httpx.AsyncClient, register: Register, outcome: str
) -> None:
    name = (await register())["process_name"]
    key = await _grant(client, name)
    response = await client.delete(f"{KEYS}/{key['external_id']}", params={"outcome": outcome})
    assert_invalid_field(response, "outcome")
    assert (await _keys(client, name))[0] == key
    assert (await _renew(client, key["external_id"]))["external_id"] == key["external_id"]


async def test_a_second_release_is_410(client: httpx.AsyncClient, register: Register) -> None:
    name = (await register())["process_name"]
    key = await _grant(client, name)
    completed = (await _release(client, key["external_id"]))["last_completed_at"]
    for outcome in (None, "completed", "failed"):
        params = {} if outcome is None else {"outcome": outcome}
        response = await client.delete(f"{KEYS}/{key['external_id']}", params=params)
        body = assert_problem(response, 410, "lease_gone")
        assert key["external_id"] in body["detail"]
    # The refused releases did not stamp the key again.
    assert (await _keys(client, name))[0]["last_completed_at"] == completed


# --- expiry, on fakeredis with a controlled clock -------------------------------------


@pytest.fixture
async def timed(prefix: str, fake_clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a fakeredis of its own, whose TIME is `fake_clock`."""
    redis = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with redis, serve(create_app(Settings(key_prefix=prefix), redis=redis)) as http:
        yield http


async def _register(client: httpx.AsyncClient, name: str, **fields: Any) -> None:
    response = await client.post(f"{API}/process", json={"process_name": name, **fields})
    assert response.status_code == 201, response.text


def _at(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(round(clock.now * 1_000_000) / 1_000_000, UTC)


def _clock_token(clock: FakeClock) -> int:
    """The fencing token's clock part at fakeredis's TIME: microseconds since the token epoch."""
    return round(clock.now * 1_000_000) - TOKEN_EPOCH_US


def _close(value: str, expected: datetime) -> bool:
    return abs(parse_time(value) - expected) <= timedelta(microseconds=2)


async def test_times_come_from_the_redis_clock(
    timed: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    fake_clock.advance(-86_400 * 400)  # far from the host's own clock
    await _register(timed, "p", key_set_size=1, lease_seconds=100)
    start = _at(fake_clock)
    key = await _grant(timed, "p")
    assert _close(key["started_at"], start)
    assert _close(key["expires_at"], start + timedelta(seconds=100))
    fake_clock.advance(12.5)
    renewed = await _renew(timed, key["external_id"], 30)
    assert _close(renewed["expires_at"], _at(fake_clock) + timedelta(seconds=30))
    assert renewed["started_at"] == key["started_at"]
    fake_clock.advance(7.25)
    released = await _release(timed, key["external_id"])
    assert _close(released["last_completed_at"], _at(fake_clock))


async def test_an_expired_lease_is_granted_again_with_a_higher_token(
    timed: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    await _register(timed, "p", key_set_size=1, lease_seconds=60)
    old = await _grant(timed, "p", "stalled")
    fake_clock.advance(61)
    new = await _grant(timed, "p", "fresh")
    assert new["key"] == old["key"] == 0
    assert old["fencing_token"] == _next_token(0, old)
    assert new["fencing_token"] == _next_token(old["fencing_token"], new)
    assert new["fencing_token"] == _clock_token(fake_clock) > old["fencing_token"]
    assert new["external_id"] != old["external_id"]
    assert new["machine"] == "fresh"
    for response in (
        await timed.patch(f"{KEYS}/{old['external_id']}"),
        await timed.patch(f"{KEYS}/{old['external_id']}", json={"lease_seconds": 60}),
        await timed.delete(f"{KEYS}/{old['external_id']}"),
        await timed.delete(f"{KEYS}/{old['external_id']}", params={"outcome": "failed"}),
    ):
        assert_problem(response, 410, "lease_gone")
    # The stalled worker's calls left the new lease alone.
    assert (await _keys(timed, "p"))[0] == new
    assert (await _renew(timed, new["external_id"]))["fencing_token"] == new["fencing_token"]


async def test_a_lease_holds_until_its_expiry_and_not_after(
    timed: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    await _register(timed, "p", key_set_size=1, lease_seconds=60)
    key = await _grant(timed, "p")
    fake_clock.advance(59.9)
    assert (await _keys(timed, "p"))[0] == key
    assert_problem(await _request(timed, "p"), 409, "no_free_key")
    fake_clock.advance(0.2)
    assert_free((await _keys(timed, "p"))[0])
    assert (await _grant(timed, "p"))["key"] == 0


async def test_listing_shows_an_expired_key_as_free_keeping_its_completion(
    timed: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    await _register(timed, "p", key_set_size=2, lease_seconds=10)
    first = await _grant(timed, "p")
    completed = (await _release(timed, first["external_id"]))["last_completed_at"]
    held = await _grant(timed, "p")  # key 1 (never completed) ...
    assert held["key"] == 1
    again = await _grant(timed, "p")  # ... then key 0 again
    assert again["key"] == 0
    fake_clock.advance(11)
    keys = await _keys(timed, "p")
    for key in keys:
        assert_free(key)
    assert keys[0]["last_completed_at"] == completed
    assert keys[1]["last_completed_at"] is None


async def test_renew_of_an_expired_lease_is_410_and_frees_the_key(
    timed: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    await _register(timed, "p", key_set_size=1, lease_seconds=10)
    key = await _grant(timed, "p")
    fake_clock.advance(10.5)
    assert_problem(await timed.patch(f"{KEYS}/{key['external_id']}"), 410, "lease_gone")
    assert_free((await _keys(timed, "p"))[0])
    # Once gone, always gone: a later release is 410 too.
    assert_problem(await timed.delete(f"{KEYS}/{key['external_id']}"), 410, "lease_gone")
    again = await _grant(timed, "p")
    assert again["fencing_token"] == _next_token(key["fencing_token"], again)
    assert again["fencing_token"] > key["fencing_token"]


async def test_release_of_an_expired_lease_is_410_and_stamps_no_completion(
    timed: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    await _register(timed, "p", key_set_size=1, lease_seconds=10)
    key = await _grant(timed, "p")
    fake_clock.advance(10.5)
    assert_problem(await timed.delete(f"{KEYS}/{key['external_id']}"), 410, "lease_gone")
    listed = (await _keys(timed, "p"))[0]
    assert_free(listed)
    assert listed["last_completed_at"] is None
    assert_problem(await timed.patch(f"{KEYS}/{key['external_id']}"), 410, "lease_gone")


async def test_renewing_keeps_a_lease_past_its_first_expiry(
    timed: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    await _register(timed, "p", key_set_size=1, lease_seconds=10)
    key = await _grant(timed, "p")
    for _ in range(5):
        fake_clock.advance(8)
        assert (await _renew(timed, key["external_id"]))["fencing_token"] == key["fencing_token"]
    # 40 s after the grant, well past the first expiry, the lease still holds.
    assert_problem(await _request(timed, "p"), 409, "no_free_key")
    assert (await _release(timed, key["external_id"]))["last_completed_at"] is not None


async def test_an_expired_key_keeps_its_place_in_the_order(
    timed: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    await _register(timed, "p", key_set_size=3, lease_seconds=3600)
    k0 = await _grant(timed, "p", lease_seconds=10)
    k1 = await _grant(timed, "p")
    fake_clock.advance(11)
    # Key 0 expired without completing: it is staler than the never-touched key 2.
    again = await _grant(timed, "p")
    assert again["key"] == 0
    assert again["fencing_token"] > k1["fencing_token"] > k0["fencing_token"]
    assert k1["fencing_token"] == k0["fencing_token"] + 1  # the clock stood still
    assert again["fencing_token"] == _next_token(k1["fencing_token"], again)
    assert again["fencing_token"] == _clock_token(fake_clock)
    assert (await _grant(timed, "p"))["key"] == 2


async def test_retry_after_counts_whole_seconds_to_the_earliest_expiry(
    timed: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    await _register(timed, "p", key_set_size=2, lease_seconds=100)
    await _grant(timed, "p")  # expires at 100
    fake_clock.advance(10)
    await _grant(timed, "p", lease_seconds=50)  # expires at 60, the earliest
    fake_clock.advance(10.2)  # now 20.2: 39.8 s to go, but a release may come sooner
    response = await _request(timed, "p")
    assert_problem(response, 409, "no_free_key")
    assert response.headers["retry-after"] == "10"
    fake_clock.advance(35)  # now 55.2: 4.8 s to go
    response = await _request(timed, "p")
    assert_problem(response, 409, "no_free_key")
    assert response.headers["retry-after"] == "5"
    fake_clock.advance(4.7)  # 0.1 s to go: still at least 1
    response = await _request(timed, "p")
    assert_problem(response, 409, "no_free_key")
    assert response.headers["retry-after"] == "1"
    fake_clock.advance(0.2)
    assert (await _grant(timed, "p"))["key"] == 1
