"""The hand list of bad input: every entry is answered with its 4xx problem, and writes nothing.

On both backends, one process (`hand-list`, two keys, key 0 leased) is registered first, so
the bad requests meet a real process and a real lease. After each entry:

- the response is the entry's RFC 9457 problem (status and code; for 422 the field named);
- the process is as it was: key 0 still held by the same lease, key 1 still free;
- a SCAN of the whole Redis finds no key a bad name could have made, and no key under this
  test's prefix but those of `hand-list` and the registry; on fakeredis, whose server is
  private to the test, every key there is under the prefix.

Several entries also appear in test_api_errors.py and test_api_processes.py, next to the
behaviour they belong to; this file is the one list to read for "what does bad input get".
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import fakeredis
import httpx
import pytest
from redis.asyncio import Redis

from tests.test_api_errors import API, assert_problem

pytestmark = pytest.mark.anyio

TARGET = "hand-list"
KEYS = f"{API}/process/batch_keys"
LEASE = "<lease>"  # stands for the fixture's live external_id in a path
MAX_BODY = 64 * 1024

BAD_NAMES = {
    "braces": "bad{brace}name",
    "open-brace": "bad{brace",
    "close-brace": "bad}brace",
    "star": "bad*star",
    "bare-star": "*",
    "space": "bad space",
    "leading-space": " bad",
    "newline": "bad\nnewline",
    "trailing-newline": "bad-newline\n",
    "carriage-return": "bad\rreturn",
    "nul": "bad\x00nul",
    "non-ascii": "bad-prozeß",
    "cjk": "日本-bad",
    "zero-width-space": "bad\u200bspace",
    "129-chars": "b" * 129,
}

BAD_KEY_SET_SIZES = {
    "zero": 0,
    "minus-one": -1,
    "true": True,
    "float-1.0": 1.0,
    "string-10": "10",
    "2**63": 2**63,
}

NOT_UUIDS = {
    "words": "not-a-uuid",
    "process-name": TARGET,
    "braces": "{hand-list}",
    "star": "*",
    "digits": "12345678",
    "one-digit-short": "0dca8456-f46d-8004-b000-19fec9297e0",
    "one-digit-long": "0dca8456-f46d-8004-b000-19fec9297e077",
    "nul": "%00",
    "non-ascii": "%C3%9F",
}

WRONG_CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/octet-stream",
]


@dataclass(frozen=True)
class Bad:
    """One request of the hand list and the problem it must get."""

    method: str
    path: str
    status: int
    code: str
    invalid: str | None = None  # for 422: the field the detail names
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _body(raw: bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"content": raw, "headers": {"content-type": content_type}}


# The three routes that take a JSON body, each with a body that would be accepted.
BODY_ROUTES = {
    "register": ("POST", f"{API}/process", {"process_name": "from-a-bad-body"}),
    "grant": ("POST", KEYS, {"process_name": TARGET, "machine": "m"}),
    "renew": ("PATCH", f"{KEYS}/{LEASE}", {"lease_seconds": 60}),
}


def _padded(valid: dict[str, Any], size: int) -> bytes:
    raw = json.dumps(valid).encode()
    return raw + b" " * (size - len(raw))


def _invalid(method: str, path: str, field: str, **request: Any) -> Bad:
    """A request answered 422 invalid_field naming `field`."""
    return Bad(method, path, 422, "invalid_field", field, **request)


def _hand_list() -> list[Any]:
    cases: list[Any] = []

    def add(case_id: str, bad: Bad) -> None:
        cases.append(pytest.param(bad, id=case_id))

    # Process names: in a body (register, grant) and in a path (unregister, list keys).
    for name_id, name in BAD_NAMES.items():
        in_path = quote(name, safe="")
        by_route = {
            "register": _invalid(
                "POST", f"{API}/process", "process_name", json={"process_name": name}
            ),
            "grant": _invalid(
                "POST", KEYS, "process_name", json={"process_name": name, "machine": "m"}
            ),
            "unregister": _invalid("DELETE", f"{API}/process/{in_path}", "process_name"),
            "list-keys": _invalid("GET", f"{KEYS}/{in_path}", "process_name"),
        }
        for route_id, bad in by_route.items():
            add(f"name-{name_id}-{route_id}", bad)

    # key_set_size that is not an integer from 1 to the maximum.
    for size_id, size in BAD_KEY_SET_SIZES.items():
        body = {"process_name": "sized", "key_set_size": size}
        bad = _invalid("POST", f"{API}/process", "key_set_size", json=body)
        add(f"key-set-size-{size_id}", bad)

    # A machine of 10 kB (the limit is 256 characters; the body is well under 64 KiB).
    body = {"process_name": TARGET, "machine": "m" * 10_240}
    add("machine-10kB", _invalid("POST", KEYS, "machine", json=body))

    # Bodies that are not a JSON object, nest too deep, are too large, or are not JSON.
    for route_id, (method, path, valid) in BODY_ROUTES.items():
        malformed = {
            "empty-array": b"[]",
            "array-of-the-valid-object": json.dumps([valid]).encode(),
            "arrays-10000-deep": b"[" * 10_000 + b"]" * 10_000,
            "objects-10000-deep": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
            "field-10000-deep": b'{"lease_seconds": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        }
        for body_id, raw in malformed.items():
            assert len(raw) <= MAX_BODY
            add(f"{body_id}-{route_id}", Bad(method, path, 400, "malformed_json", **_body(raw)))
        megabyte = _body(_padded(valid, 1 << 20))
        add(f"1MB-{route_id}", Bad(method, path, 413, "body_too_large", **megabyte))
        for content_type in WRONG_CONTENT_TYPES:
            typed = _body(json.dumps(valid).encode(), content_type)
            type_id = content_type.split(";")[0].replace("/", "-")
            add(f"{type_id}-{route_id}", Bad(method, path, 415, "unsupported_media_type", **typed))

    # An external_id that is not a UUID: no such lease.
    for id_id, external_id in NOT_UUIDS.items():
        for method in ("PATCH", "DELETE"):
            bad = Bad(method, f"{KEYS}/{external_id}", 404, "unknown_lease")
            add(f"external-id-{id_id}-{method.lower()}", bad)
    return cases


HAND_LIST = _hand_list()


@dataclass(frozen=True)
class Target:
    """The process the bad requests meet, and its one live lease."""

    name: str
    external_id: str
    keys: list[dict[str, Any]]


async def _keys(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get(f"{KEYS}/{TARGET}")
    assert response.status_code == 200, response.text
    keys: list[dict[str, Any]] = response.json()
    return keys


@pytest.fixture
async def target(client: httpx.AsyncClient) -> Target:
    registered = await client.post(
        f"{API}/process", json={"process_name": TARGET, "key_set_size": 2}
    )
    assert registered.status_code == 201, registered.text
    granted = await client.post(KEYS, json={"process_name": TARGET, "machine": "holder"})
    assert granted.status_code == 201, granted.text
    return Target(TARGET, granted.json()["external_id"], await _keys(client))


TAG = re.compile(r"^[^:]*:(\{[^}]*\}):")


async def assert_no_stray_key(redis: Redis, prefix: str) -> None:
    """Redis holds only what the one registration and grant made, all under the prefix."""
    keys = [key async for key in redis.scan_iter()]
    for name in BAD_NAMES.values():
        made = [key for key in keys if f"{{{name}}}" in key]
        assert made == [], f"a key from the bad name {name!r}: {made}"
    mine = [key for key in keys if key.startswith(f"{prefix}:")]
    assert mine, "the registration of hand-list wrote nothing?"
    for key in mine:
        tag = TAG.match(key)
        assert tag is not None, key
        assert tag.group(1) in {f"{{{TARGET}}}", "{registry}"}, key
    if isinstance(redis, fakeredis.FakeAsyncRedis):
        # The server is this test's alone: nothing at all outside the prefix.
        assert sorted(keys) == sorted(mine)


@pytest.mark.parametrize("bad", HAND_LIST)
async def test_bad_input_gets_its_4xx_problem_and_writes_nothing(
    client: httpx.AsyncClient, redis: Redis, prefix: str, target: Target, bad: Bad
) -> None:
    response = await client.request(
        bad.method,
        bad.path.replace(LEASE, target.external_id),
        json=bad.json,
        content=bad.content,
        headers=bad.headers,
    )
    body = assert_problem(response, bad.status, bad.code)
    if bad.invalid is not None:
        assert f"'{bad.invalid}'" in body["detail"], body
    # Nothing changed: the lease is the same lease, the other key still free, no new process.
    assert await _keys(client) == target.keys
    processes = await client.get(f"{API}/process")
    assert [p["process_name"] for p in processes.json()] == [TARGET]
    await assert_no_stray_key(redis, prefix)


async def test_a_streamed_1mb_body_is_413_and_writes_nothing(
    client: httpx.AsyncClient, redis: Redis, prefix: str, target: Target
) -> None:
    """No Content-Length: the limit holds while the body streams in, for a whole megabyte."""

    async def megabyte() -> AsyncIterator[bytes]:
        yield b'{"process_name": "streamed", "pad": "'
        for _ in range(256):
            yield b"x" * 4096
        yield b'"}'

    response = await client.post(
        f"{API}/process", content=megabyte(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body_too_large")
    assert await _keys(client) == target.keys
    await assert_no_stray_key(redis, prefix)
