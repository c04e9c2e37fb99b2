"""HTTP behaviour that holds on every route: problem documents, body checks, routing errors,
health and readiness, the OpenAPI document, and Redis being unreachable.

The helpers at the top are shared by test_api_processes.py and test_api_batch_keys.py.
"""

from __future__ import annotations

import hashlib
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from coordinator import lease_id
from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.embedded import free_port
from coordinator.scripts import sources
from tests.conftest import serve

pytestmark = pytest.mark.anyio

API = "/api/v1"
PROBLEM_MEDIA_TYPE = "application/problem+json"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
KEY_FIELDS = {
    "external_id",
    "key",
    "last_completed_at",
    "machine",
    "process_name",
    "started_at",
    "expires_at",
    "fencing_token",
    # Batch runs (README "Batch runs"): in every key object.
    "attempts",
    "state",
    "retry_at",
}
TIME_FIELDS = ("last_completed_at", "started_at", "expires_at")
LEASE_FIELDS = ("external_id", "machine", "started_at", "expires_at", "fencing_token")
MAX_BODY = 64 * 1024


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """`response` is an RFC 9457 problem of `status` and `code`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert set(body) >= {"type", "title", "status", "detail", "code"}, body
    assert body["status"] == status
    assert body["code"] == code
    for field in ("type", "title", "detail"):
        assert isinstance(body[field], str), body
        assert body[field], body
    return body


def assert_invalid_field(response: httpx.Response, field: str) -> None:
    """A 422 `invalid_field` naming `field` in its detail."""
    body = assert_problem(response, 422, "invalid_field")
    assert field in body["detail"], body


def parse_time(value: str) -> datetime:
    """An API timestamp, checked against the contract's exact RFC 3339 form."""
    assert TIMESTAMP.fullmatch(value), value
    return datetime.fromisoformat(value)


def assert_key(key: dict[str, Any], process_name: str) -> None:
    """`key` has the contract's fields, well-typed and well-formatted (a grant's and a key's
    own resource also carry its checkpoint)."""
    assert set(key) - {"checkpoint"} == KEY_FIELDS, key
    assert key["state"] in {"free", "held", "done", "backoff", "quarantined"}
    assert isinstance(key["attempts"], int)
    assert key["process_name"] == process_name
    assert isinstance(key["key"], int)
    assert not isinstance(key["key"], bool)
    assert key["key"] >= 0
    for field in TIME_FIELDS:
        if key[field] is not None:
            parse_time(key[field])
    if key["external_id"] is None:
        assert all(key[field] is None for field in LEASE_FIELDS), key
    else:
        assert str(uuid.UUID(key["external_id"])) == key["external_id"]
        assert isinstance(key["machine"], str)
        assert isinstance(key["fencing_token"], int)
        assert key["fencing_token"] >= 1
        assert key["started_at"] is not None


def assert_free(key: dict[str, Any]) -> None:
    """`key` is under no lease."""
    assert all(key[field] is None for field in LEASE_FIELDS), key


# Routes that take a JSON body: (method, path). The PATCH id is well-formed but unknown:
# body checks come before the lease is looked up.
BODY_ROUTES = [
    ("POST", f"{API}/process"),
    ("POST", f"{API}/process/batch_keys"),
    ("PATCH", f"{API}/process/batch_keys/{uuid.uuid4()}"),
]
BODY_ROUTE_IDS = ["register", "grant", "renew"]


# --- 400 malformed_json ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"process_name": "a",}',
        b"{'process_name': 'a'}",
        b"not json",
        b"[]",
        b'[{"process_name": "a"}]',
        b'"a string"',
        b"42",
        b"true",
        b"null",
        b'{"process_name": "\xff"}',
        b"[" * 2000 + b"]" * 2000,
    ],
    ids=[
        "truncated",
        "trailing-comma",
        "single-quotes",
        "bare-words",
        "empty-array",
        "array-of-object",
        "string",
        "number",
        "true",
        "null",
        "invalid-utf8",
        "too-deep",
    ],
)
async def test_a_body_that_is_not_a_json_object_is_400(
    client: httpx.AsyncClient, method: str, path: str, raw: bytes
) -> None:
    response = await client.request(
        method, path, content=raw, headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "malformed_json")


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES[:2], ids=BODY_ROUTE_IDS[:2])
async def test_an_empty_body_is_400_where_a_body_is_required(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(
        method, path, content=b"", headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "malformed_json")


async def test_a_lone_surrogate_is_refused_not_stored(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/process",
        content=b'{"process_name": "\\ud800"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code in (400, 422), response.text
    assert_problem(response, response.status_code, response.json()["code"])
    assert (await client.get(f"{API}/process")).json() == []


# --- 413 body_too_large ---------------------------------------------------------------


def _oversized_registration() -> bytes:
    """A syntactically valid registration one byte over the limit."""
    head = b'{"process_name": "big"}'
    return head + b" " * (MAX_BODY + 1 - len(head))


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
async def test_a_body_over_64_kib_is_413(client: httpx.AsyncClient, method: str, path: str) -> None:
    raw = _oversized_registration()
    assert len(raw) == MAX_BODY + 1
    response = await client.request(
        method, path, content=raw, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "body_too_large")
    assert (await client.get(f"{API}/process")).json() == []


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
async def test_a_streamed_body_over_64_kib_is_413(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    """No Content-Length: the limit holds while the body streams in."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"process_name": "big", "pad": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    response = await client.request(
        method, path, content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body_too_large")


async def test_a_body_of_exactly_64_kib_is_accepted(client: httpx.AsyncClient) -> None:
    head = b'{"process_name": "exactly-64k"}'
    raw = head + b" " * (MAX_BODY - len(head))
    assert len(raw) == MAX_BODY
    response = await client.post(
        f"{API}/process", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["process_name"] == "exactly-64k"


# --- 415 and accepted content types ---------------------------------------------------


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_a_non_json_content_type_is_415(
    client: httpx.AsyncClient, method: str, path: str, content_type: str
) -> None:
    response = await client.request(
        method,
        path,
        content=b'{"process_name": "typed", "machine": "m"}',
        headers={"content-type": content_type},
    )
    assert_problem(response, 415, "unsupported_media_type")
    assert (await client.get(f"{API}/process")).json() == []


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON"])
async def test_json_content_type_variants_are_accepted(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        f"{API}/process",
        content=b'{"process_name": "typed"}',
        headers={"content-type": content_type},
    )
    assert response.status_code == 201, response.text


# --- 404 not_found and 405 method_not_allowed -----------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ui/"),  # "/" and "/ui" are the dashboard
        ("GET", "/nope"),
        ("GET", "/api/v1"),
        ("GET", "/api/v2/process"),
        ("GET", f"{API}/processes"),
        ("GET", f"{API}/process/a/b"),
        ("GET", f"{API}/process/batch_keys/a/b"),
        ("POST", f"{API}/process/batch_keys/a/b"),
        ("DELETE", f"{API}/process/a/b"),
        ("GET", f"{API}/process/a/keys/"),
        ("GET", f"{API}/process/a/keys/0/b"),
        ("GET", f"{API}/process/"),
        ("GET", f"{API}/process/batch_keys/"),
        ("DELETE", f"{API}/process/batch_keys/"),
        ("PATCH", f"{API}/process/batch_keys/"),
    ],
)
async def test_an_unknown_route_is_404_not_found(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)
    assert_problem(response, 404, "not_found")
    assert "location" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", f"{API}/process", {"GET", "POST"}),
        ("DELETE", f"{API}/process", {"GET", "POST"}),
        ("PATCH", f"{API}/process", {"GET", "POST"}),
        ("POST", f"{API}/process/some-name", {"GET", "DELETE"}),
        ("POST", f"{API}/process/some-name/keys/0", {"GET"}),
        # "batch_keys" is also a valid process name, so GET and DELETE of it are routes.
        ("PUT", f"{API}/process/batch_keys", {"GET", "POST", "DELETE"}),
        ("POST", f"{API}/process/batch_keys/some-id", {"GET", "PATCH", "DELETE"}),
        ("PUT", f"{API}/process/batch_keys/some-id", {"GET", "PATCH", "DELETE"}),
        ("POST", "/healthz", {"GET"}),
        ("DELETE", "/readyz", {"GET"}),
        ("POST", "/openapi.json", {"GET"}),
    ],
)
async def test_a_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path)
    body = assert_problem(response, 405, "method_not_allowed")
    allow = {m.strip() for m in response.headers["allow"].split(",")}
    # HEAD comes with every GET route.
    assert allow - {"HEAD"} == allowed
    assert method not in allow
    assert method in body["detail"]


# --- a sweep of odd inputs: never a 5xx -----------------------------------------------


async def test_odd_external_ids_are_404_never_5xx(client: httpx.AsyncClient, register: Any) -> None:
    process = await register(key_set_size=1)
    name = process["process_name"]
    odd = [
        "%00",
        "%FF",
        "x" * 5000,
        "{}",
        "*",
        "00000000-0000-0000-0000-000000000000",
        str(uuid.UUID(int=(8 << 76) | (0b10 << 62))),  # a v8 UUID carrying token 0
        str(lease_id.compose(name, lease_id.MAX_TOKEN)),
    ]
    for external_id in odd:
        for method in ("PATCH", "DELETE"):
            response = await client.request(method, f"{API}/process/batch_keys/{external_id}")
            assert_problem(response, 404, "unknown_lease")


@pytest.mark.parametrize(
    "body",
    [
        {"process_name": "n", "key_set_size": 2**64},
        {"process_name": "n", "key_set_size": -(2**63) - 1},
        {"process_name": "n", "key_set_size": 1e308},
        {"process_name": "n", "lease_seconds": 2**63},
        {"process_name": ["n"]},
        {"process_name": {"n": 1}},
        {"process_name": "n", "key_set_size": {"$gt": 1}},
    ],
)
async def test_odd_registrations_are_4xx_never_5xx(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post(f"{API}/process", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert_problem(response, response.status_code, response.json()["code"])
    assert (await client.get(f"{API}/process")).json() == []


# --- health, readiness ----------------------------------------------------------------


async def test_healthz_is_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"


async def test_readyz_is_200_with_a_working_store(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text


async def test_readyz_notices_and_repairs_a_flushed_script_cache(
    client: httpx.AsyncClient, redis: Redis, register: Any
) -> None:
    process = await register(key_set_size=2)
    await redis.script_flush()
    shas = [hashlib.sha1(source.encode()).hexdigest() for source in sources().values()]
    assert not any(await redis.script_exists(*shas))
    assert (await client.get("/readyz")).status_code == 200
    # readyz reloaded every script: Redis knows them all again.
    assert all(await redis.script_exists(*shas))
    response = await client.post(
        f"{API}/process/batch_keys", json={"process_name": process["process_name"], "machine": "m"}
    )
    assert response.status_code == 201, response.text


async def test_the_api_works_after_a_script_flush(
    client: httpx.AsyncClient, redis: Redis, register: Any
) -> None:
    """EVALSHA answered NOSCRIPT is retried with the source, not reported."""
    process = await register(key_set_size=2)
    await redis.script_flush()
    response = await client.post(
        f"{API}/process/batch_keys", json={"process_name": process["process_name"], "machine": "m"}
    )
    assert response.status_code == 201, response.text


# --- the OpenAPI document -------------------------------------------------------------


API_OPERATIONS = {
    ("/api/v1/process", "get"),
    ("/api/v1/process", "post"),
    ("/api/v1/process/{}", "get"),
    ("/api/v1/process/{}", "delete"),
    ("/api/v1/process/{}/keys/{}", "get"),
    ("/api/v1/process/{}/keys/{}/retry", "post"),
    ("/api/v1/process/{}/keys/retry", "post"),
    ("/api/v1/process/{}/passes", "post"),
    ("/api/v1/process/{}/passes/{}", "get"),
    ("/api/v1/process/{}/progress", "get"),
    ("/api/v1/process/batch_keys", "post"),
    ("/api/v1/process/batch_keys/{}", "get"),
    ("/api/v1/process/batch_keys/{}", "patch"),
    ("/api/v1/process/batch_keys/{}", "delete"),
    ("/api/v1/process/batch_keys/{}/revoke", "post"),
    ("/api/v1/process/{}/events", "get"),
    ("/api/v1/process/{}/events", "delete"),
    ("/api/v1/token", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
}
API_CODES = {
    "malformed_json",
    "body_too_large",
    "unsupported_media_type",
    "invalid_field",
    "not_found",
    "method_not_allowed",
    "store_unavailable",
    "process_exists",
    "unknown_process",
    "no_free_key",
    "unknown_lease",
    "unknown_key",
    "lease_gone",
    "not_lease_holder",
}


def _template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


async def _openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


async def test_openapi_is_version_3_1(client: httpx.AsyncClient) -> None:
    document = await _openapi(client)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"]
    assert document["info"]["version"]


async def test_openapi_describes_every_route_and_method(client: httpx.AsyncClient) -> None:
    document = await _openapi(client)
    described = {
        (_template(path), method)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert described >= API_OPERATIONS
    # ... and every route the app serves, read from the app itself.
    from coordinator.app import ROUTES  # noqa: PLC0415

    served = {
        (_template(route.path), method.lower())
        for route in ROUTES
        if route.path != "/openapi.json"
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert described >= served
    assert served == API_OPERATIONS


async def test_openapi_lists_every_problem_code(client: httpx.AsyncClient) -> None:
    document = await _openapi(client)
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) >= {"type", "title", "status", "detail", "code"}
    assert set(problem["properties"]["code"]["enum"]) >= API_CODES


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/api/v1/process", "get", {"200", "503"}),
        ("/api/v1/process", "post", {"201", "400", "409", "413", "415", "422", "503"}),
        ("/api/v1/process/{}", "get", {"200", "404", "503"}),
        ("/api/v1/process/{}", "delete", {"200", "404", "503"}),
        ("/api/v1/process/{}/keys/{}", "get", {"200", "404", "422", "503"}),
        ("/api/v1/process/batch_keys", "post", {"201", "404", "409", "422", "503"}),
        ("/api/v1/process/batch_keys/{}", "get", {"200", "404", "503"}),
        ("/api/v1/process/batch_keys/{}", "patch", {"200", "404", "410", "503"}),
        ("/api/v1/process/batch_keys/{}", "delete", {"200", "404", "410", "503"}),
        ("/api/v1/process/{}/keys/retry", "post", {"200", "403", "404", "422", "503"}),
        ("/readyz", "get", {"200", "503"}),
    ],
)
async def test_openapi_describes_each_routes_responses(
    client: httpx.AsyncClient, path: str, method: str, statuses: set[str]
) -> None:
    document = await _openapi(client)
    items = {_template(p): item for p, item in document["paths"].items()}
    operation = items[path][method]
    assert set(operation["responses"]) >= statuses
    for status in statuses - {"200", "201"}:
        content = operation["responses"][status]["content"]
        assert content["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
    if method in {"post"}:
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    if "201" in statuses:
        assert "Location" in operation["responses"]["201"]["headers"]


async def test_openapi_request_bodies_match_the_contract(client: httpx.AsyncClient) -> None:
    schemas = (await _openapi(client))["components"]["schemas"]
    assert set(schemas["RegisterRequest"]["properties"]) == {
        "process_name",
        "key_set_size",
        "lease_seconds",
        "mode",
        "max_attempts",
        "retry_backoff_seconds",
        "max_failed_keys",
    }
    assert schemas["RegisterRequest"]["required"] == ["process_name"]
    assert set(schemas["GrantRequest"]["properties"]) == {
        "process_name",
        "machine",
        "lease_seconds",
        "wait_seconds",
        "request_id",
    }
    assert set(schemas["GrantRequest"]["required"]) == {"process_name", "machine"}
    assert set(schemas["RenewRequest"]["properties"]) == {"lease_seconds", "checkpoint"}
    assert set(schemas["BatchKey"]["required"]) == KEY_FIELDS
    assert set(schemas["Process"]["required"]) == {
        "process_name",
        "key_set_size",
        "key_space_size",
        "lease_seconds",
    }


# --- 503 store_unavailable ------------------------------------------------------------


def _unreachable_requests() -> list[tuple[str, str, dict[str, Any] | None]]:
    some_id = str(lease_id.compose("somewhere", 1))
    return [
        ("GET", f"{API}/process", None),
        ("POST", f"{API}/process", {"process_name": "p"}),
        ("GET", f"{API}/process/p", None),
        ("DELETE", f"{API}/process/p", None),
        ("GET", f"{API}/process/p/keys/0", None),
        ("GET", f"{API}/process/batch_keys/p", None),
        ("POST", f"{API}/process/batch_keys", {"process_name": "p", "machine": "m"}),
        ("PATCH", f"{API}/process/batch_keys/{some_id}", {}),
        ("DELETE", f"{API}/process/batch_keys/{some_id}", None),
    ]


@pytest.fixture
async def unreachable(prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a Redis client whose port nothing listens on (and no retry backoff)."""
    redis = Redis(
        port=free_port(),
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    async with redis, serve(create_app(Settings(key_prefix=prefix), redis=redis)) as http:
        yield http


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
async def timing_out(prefix: str, silent_port: int) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a Redis client whose server never replies."""
    redis = Redis(
        port=silent_port,
        socket_connect_timeout=0.2,
        socket_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    async with redis, serve(create_app(Settings(key_prefix=prefix), redis=redis)) as http:
        yield http


def _assert_unavailable(response: httpx.Response) -> None:
    assert_problem(response, 503, "store_unavailable")
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1


@pytest.mark.parametrize(
    ("method", "path", "body"),
    _unreachable_requests(),
    ids=["list", "register", "process", "unregister", "key", "keys", "grant", "renew", "release"],
)
async def test_every_store_route_is_503_when_redis_is_unreachable(
    unreachable: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = await unreachable.request(method, path, json=body)
    _assert_unavailable(response)


async def test_readyz_is_503_and_healthz_200_when_redis_is_unreachable(
    unreachable: httpx.AsyncClient,
) -> None:
    _assert_unavailable(await unreachable.get("/readyz"))
    assert (await unreachable.get("/healthz")).status_code == 200


async def test_a_redis_that_times_out_is_503(timing_out: httpx.AsyncClient) -> None:
    _assert_unavailable(await timing_out.get(f"{API}/process"))
    _assert_unavailable(await timing_out.get("/readyz"))


async def test_client_errors_still_win_when_redis_is_unreachable(
    unreachable: httpx.AsyncClient,
) -> None:
    """A request that is wrong on its face is answered without asking Redis."""
    assert_invalid_field(
        await unreachable.post(f"{API}/process", json={"process_name": "a b"}), "process_name"
    )
    assert_problem(
        await unreachable.patch(f"{API}/process/batch_keys/not-a-uuid"), 404, "unknown_lease"
    )
    assert_problem(await unreachable.get("/nope"), 404, "not_found")
