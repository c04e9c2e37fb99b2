"""Query parameters at and past their bounds, on both backends.

- Every value past a bound is 422 `invalid_field` naming the parameter, never a 5xx: the
  values below once reached Redis or `int()` unchecked and were answered 500.
- Reading events after the last id Redis can hold (18446744073709551615-18446744073709551615,
  where Redis refuses an exclusive start) is an empty page, or 404 for an unknown process.
- The store, which direct workers call, refuses the same event ids with InvalidField.
- /openapi.json states the bounds the service enforces: for every query parameter of every
  operation, each probe value is accepted exactly when the document's schema allows it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from coordinator.errors import InvalidField
from coordinator.store import Store
from tests.conftest import Register
from tests.test_api_errors import API, assert_problem

pytestmark = pytest.mark.anyio

KEYS = f"{API}/process/batch_keys"
PART_MAX = 2**64 - 1  # written out here, not taken from the code under test
LAST_ID = f"{PART_MAX}-{PART_MAX}"

# Integers a query must refuse although str.isdigit() takes them, or int() fails on them.
BAD_INTEGERS = {
    "double-minus": "--5",
    "superscript-two": "\N{SUPERSCRIPT TWO}",
    "arabic-indic-ten": "\N{ARABIC-INDIC DIGIT ONE}\N{ARABIC-INDIC DIGIT ZERO}",
    "5000-digits": "9" * 5000,
}
BAD_EVENT_IDS = {
    "sequence-past-2**64-1": "0-20000000000000000000",
    "sequence-2**64": f"0-{PART_MAX + 1}",
    "milliseconds-2**64": f"{PART_MAX + 1}-0",
    "both-20-nines": "99999999999999999999-99999999999999999999",
    "arabic-indic-one": "\N{ARABIC-INDIC DIGIT ONE}-0",
}


def _cases() -> list[Any]:
    cases = [
        pytest.param("events", "after", value, id=f"events-after-{case_id}")
        for case_id, value in BAD_EVENT_IDS.items()
    ]
    for listing in ("events", "keys"):
        for parameter in ("limit", "after"):
            if (listing, parameter) == ("events", "after"):
                continue
            cases += [
                pytest.param(listing, parameter, value, id=f"{listing}-{parameter}-{case_id}")
                for case_id, value in BAD_INTEGERS.items()
            ]
    # One past the last key of the largest key set a deployment may configure (2**40 keys).
    cases.append(pytest.param("keys", "after", str(2**40), id="keys-after-2**40"))
    return cases


def _listing(listing: str, name: str) -> str:
    return f"{API}/process/{name}/events" if listing == "events" else f"{KEYS}/{name}"


@pytest.mark.parametrize(("listing", "parameter", "value"), _cases())
async def test_a_query_value_past_its_bound_is_422_naming_it(
    client: httpx.AsyncClient, register: Register, listing: str, parameter: str, value: str
) -> None:
    name = (await register(key_set_size=2))["process_name"]
    response = await client.get(_listing(listing, name), params={parameter: value})
    body = assert_problem(response, 422, "invalid_field")
    assert f"'{parameter}'" in body["detail"], body


async def test_events_after_the_last_possible_id_are_none(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register())["process_name"]
    response = await client.get(f"{API}/process/{name}/events", params={"after": LAST_ID})
    assert response.status_code == 200, response.text
    assert response.json() == []
    unknown = await client.get(f"{API}/process/never-registered/events", params={"after": LAST_ID})
    assert_problem(unknown, 404, "unknown_process")


async def test_a_direct_worker_gets_the_same_answers(store: Store) -> None:
    """The store checks an event id itself, for workers that skip the HTTP layer."""
    await store.register("direct")
    for value in BAD_EVENT_IDS.values():
        with pytest.raises(InvalidField, match="'after'"):
            await store.events("direct", value)
    assert await store.events("direct", LAST_ID) == []


# Probe values for each query parameter, beside the bounds read from the document itself.
EVENT_ID_PROBES = [
    "-",
    "0-0",
    "1764000000000-0",
    f"{PART_MAX}-0",
    f"0-{PART_MAX}",
    LAST_ID,
    f"{PART_MAX - 1}-{PART_MAX}",
    "01-0",
    "0-01",
    "0",
    "",
    "(0-0",
    "0-0\n",
    "\N{SUPERSCRIPT TWO}-0",
    *BAD_EVENT_IDS.values(),
]
INTEGER_PROBES = ["", "1.0", "+1", " 1", "0x10", "1e3", *BAD_INTEGERS.values()]


def _probes(schema: dict[str, Any]) -> list[str]:
    """Values at, inside and just past each bound the schema states, and malformed ones."""
    if schema.get("type") == "integer":
        low, high = schema["minimum"], schema["maximum"]
        return [str(v) for v in (low - 1, low, low + 1, high - 1, high, high + 1)] + [
            *INTEGER_PROBES
        ]
    if "enum" in schema:
        return [*schema["enum"], "", "COMPLETED", f"{schema['enum'][0]}\n", "x"]
    assert "pattern" in schema, f"no probes for a query parameter of schema {schema}"
    return EVENT_ID_PROBES


def _allowed(schema: dict[str, Any], raw: str) -> bool:
    """Whether the document's schema allows `raw` as the parameter's value."""
    if schema.get("type") == "integer":
        # Past 30 digits is past every bound (and int() refuses past 4300 digits).
        return re.fullmatch(r"-?[0-9]{1,30}", raw) is not None and (
            schema["minimum"] <= int(raw) <= schema["maximum"]
        )
    if "enum" in schema:
        return raw in schema["enum"]
    # JSON Schema patterns are ECMA 262, where `$` matches only at the very end.
    return re.search(schema["pattern"].replace("$", r"\Z"), raw) is not None


Target = Callable[[], Awaitable[str]]


async def _targets(client: httpx.AsyncClient, register: Register) -> dict[str, Target]:
    """Where each operation with query parameters is probed, by operationId: a fresh path
    per probe (a release needs a live lease each time)."""
    name = (await register(key_set_size=1))["process_name"]

    async def keys() -> str:
        return f"{KEYS}/{quote(name)}"

    async def events() -> str:
        return f"{API}/process/{quote(name)}/events"

    # Leases of a process of their own, with a key per probe: a probe released `fatal`
    # quarantines its key, which a one-key process would then have none left to grant.
    leased = (await register(key_set_size=1000))["process_name"]

    async def lease() -> str:
        granted = await client.post(KEYS, json={"process_name": leased, "machine": "prober"})
        assert granted.status_code == 201, granted.text
        return f"{KEYS}/{granted.json()['external_id']}"

    # A completed pass, so that a wait allowed for answers at once.
    done = (await register(key_set_size=1, mode="once"))["process_name"]
    only = await client.post(KEYS, json={"process_name": done, "machine": "prober"})
    assert (await client.delete(f"{KEYS}/{only.json()['external_id']}")).status_code == 200

    async def finished_pass() -> str:
        return f"{API}/process/{quote(done)}/passes/1"

    async def processes() -> str:
        return f"{API}/process"

    return {
        "listProcesses": processes,
        "listBatchKeys": keys,
        "listEvents": events,
        "releaseBatchKey": lease,
        "getPass": finished_pass,
    }


async def test_openapi_states_the_bounds_the_service_enforces(
    client: httpx.AsyncClient, register: Register
) -> None:
    document = (await client.get("/openapi.json")).json()
    targets = await _targets(client, register)
    probed: list[str] = []
    for methods in document["paths"].values():
        for method, operation in methods.items():
            query = [p for p in operation.get("parameters", []) if p["in"] == "query"]
            for parameter in query:
                schema, field = parameter["schema"], parameter["name"]
                target = targets[operation["operationId"]]
                for raw in _probes(schema):
                    path = await target()
                    response = await client.request(method, path, params={field: raw})
                    label = f"{method.upper()} {operation['operationId']} ?{field}={raw[:40]!r}"
                    if _allowed(schema, raw):
                        assert response.status_code == 200, f"{label}: {response.text}"
                        continue
                    body = assert_problem(response, 422, "invalid_field")
                    assert f"'{field}'" in body["detail"], f"{label}: {body}"
                    if method == "delete":  # the lease is still live: end it for the next probe
                        assert (await client.delete(path)).status_code == 200
                probed.append(f"{operation['operationId']}?{field}")
    assert sorted(probed) == [
        "getPass?wait_seconds",
        "listBatchKeys?after",
        "listBatchKeys?limit",
        "listEvents?after",
        "listEvents?limit",
        "listProcesses?after",
        "listProcesses?limit",
        "listProcesses?prefix",
        "releaseBatchKey?outcome",
    ]
