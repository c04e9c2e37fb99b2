"""What only a browser page would send is refused, on both backends: a Host that is not the
service's (DNS rebinding) is 421, a body without a JSON Content-Type 415, a change a browser
labels cross-site 403, and none of them changes anything. Clients that are not browsers, and
the same-origin dashboard, pass (coordinator/browser_guard.py, schemas.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from coordinator import browser_guard
from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.browser_guard import STATE_CHANGING
from coordinator.config import ConfigError, Settings
from tests.conftest import serve

PROCESS = "/api/v1/process"
KEYS = "/api/v1/process/batch_keys"
pytestmark = pytest.mark.anyio


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def _process(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """The process as the API shows it to a plain (non-browser) client."""
    response = await client.get(f"{PROCESS}/{name}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def _keys(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    response = await client.get(f"{KEYS}/{name}")
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


# --- Host ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", PROCESS),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/"),
        ("DELETE", f"{PROCESS}/{{name}}"),
        ("POST", f"{PROCESS}/{{name}}/passes"),
    ],
)
async def test_a_foreign_host_is_421_and_changes_nothing(
    client: httpx.AsyncClient, new_name: Callable[[], str], method: str, path: str
) -> None:
    name = new_name()
    assert (await client.post(PROCESS, json={"process_name": name})).status_code == 201
    before = await _process(client, name)
    response = await client.request(
        method, path.format(name=name), headers={"Host": "rebind.example:8000"}
    )
    assert_problem(response, 421, "host_not_allowed")
    assert "rebind.example" in response.json()["detail"]
    assert await _process(client, name) == before


LOOPBACK = [
    "localhost",
    "localhost:8000",
    "LocalHost.:1",
    "127.0.0.1",
    "127.0.0.1:65535",
    "[::1]:9",
]
LOOKALIKES = ["127.0.0.2", "localhost.example", "[::2]", "", "0.0.0.0", "[::1]x", "localhost:x"]


async def test_only_loopback_names_pass_with_any_port(client: httpx.AsyncClient) -> None:
    for host in LOOPBACK:
        assert (await client.get(PROCESS, headers={"Host": host})).status_code == 200, host
    for host in LOOKALIKES:
        response = await client.get(PROCESS, headers={"Host": host})
        assert_problem(response, 421, "host_not_allowed")


async def test_the_address_the_request_arrived_at_passes(redis: Redis, prefix: str) -> None:
    """`serve --host 10.1.2.3` and the CLI that calls it there: an address, not a name."""
    app = create_app(Settings(key_prefix=prefix), redis=redis)
    async with app.router.lifespan_context(app) as state:

        async def at_address(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            scope["server"] = ("10.1.2.3", 8000)
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=at_address)
        async with httpx.AsyncClient(transport=transport, base_url="http://10.1.2.3:8000") as http:
            assert (await http.get(PROCESS)).status_code == 200
            for host in ("10.1.2.4:8000", "rebind.example:8000"):
                response = await http.get(PROCESS, headers={"Host": host})
                assert_problem(response, 421, "host_not_allowed")


async def _guarded(redis: Redis, prefix: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(Settings(key_prefix=prefix, **settings), redis=redis)) as http:
        yield http


async def test_listed_hosts_pass_beside_loopback(redis: Redis, prefix: str) -> None:
    async for http in _guarded(redis, prefix, allowed_hosts=("api.example", "[fd00::1]")):
        for host in ("api.example", "API.example:443", "[fd00::1]:8000", "localhost"):
            assert (await http.get(PROCESS, headers={"Host": host})).status_code == 200, host
        response = await http.get(PROCESS, headers={"Host": "rebind.example"})
        assert_problem(response, 421, "host_not_allowed")


async def test_with_tokens_the_host_is_checked_only_when_listed(redis: Redis, prefix: str) -> None:
    token, line = new_token("admin")
    auth = {"Authorization": f"Bearer {token}", "Host": "api.example"}
    async for http in _guarded(redis, prefix, tokens=line):
        assert (await http.get(PROCESS, headers=auth)).status_code == 200
    async for http in _guarded(redis, prefix, tokens=line, allowed_hosts=("other.example",)):
        assert_problem(await http.get(PROCESS, headers=auth), 421, "host_not_allowed")
        auth["Host"] = "other.example"
        assert (await http.get(PROCESS, headers=auth)).status_code == 200


def test_allowed_hosts_setting_is_parsed_and_checked() -> None:
    assert Settings.from_env({}).allowed_hosts is None
    listed = Settings.from_env({"COORDINATOR_ALLOWED_HOSTS": " Api.Example., 10.0.0.5,[FD00::1]"})
    assert listed.allowed_hosts == ("api.example", "10.0.0.5", "[fd00::1]")
    for bad in ("api.example:8000", "a b", "api.example,,b", "*", "http://api.example"):
        with pytest.raises(ConfigError, match="COORDINATOR_ALLOWED_HOSTS"):
            Settings.from_env({"COORDINATOR_ALLOWED_HOSTS": bad})


# --- Content-Type -------------------------------------------------------------------------


async def test_a_json_body_without_content_type_is_415_and_changes_nothing(
    client: httpx.AsyncClient, new_name: Callable[[], str]
) -> None:
    """What fetch(url, {mode: "no-cors", body}) sends: bytes, no Content-Type, no preflight."""
    name = new_name()
    bare = orjson.dumps({"process_name": name, "key_set_size": 3})
    assert_problem(await client.post(PROCESS, content=bare), 415, "unsupported_media_type")
    assert (await client.get(f"{PROCESS}/{name}")).status_code == 404

    assert (await client.post(PROCESS, json={"process_name": name})).status_code == 201
    grant = orjson.dumps({"process_name": name, "machine": "m", "lease_seconds": 86400})
    response = await client.post(KEYS, content=grant)
    assert_problem(response, 415, "unsupported_media_type")
    assert "Content-Type" in response.json()["detail"]
    assert all(key["external_id"] is None for key in await _keys(client, name))

    held = (await client.post(KEYS, json={"process_name": name, "machine": "m"})).json()
    renew = orjson.dumps({"lease_seconds": 86400})
    lease = f"{KEYS}/{held['external_id']}"
    assert_problem(await client.patch(lease, content=renew), 415, "unsupported_media_type")
    # A body of only whitespace is still a body.
    passes = f"{PROCESS}/{name}/passes"
    assert_problem(await client.post(passes, content=b" "), 415, "unsupported_media_type")
    assert (await _process(client, name))["pass"]["number"] == 1

    # Without a body no Content-Type is needed; a JSON one with parameters is JSON.
    assert (await client.patch(lease)).status_code == 200
    assert (await client.post(passes)).status_code == 201
    typed = {"Content-Type": "application/json; charset=utf-8"}
    other = orjson.dumps({"process_name": new_name()})
    assert (await client.post(PROCESS, content=other, headers=typed)).status_code == 201


# --- Cross-site changes -------------------------------------------------------------------

CROSS_SITE = {
    "fetch-site-cross-site": {"Sec-Fetch-Site": "cross-site"},
    "fetch-site-same-site": {"Sec-Fetch-Site": "same-site"},
    "other-origin": {"Origin": "http://attacker.example"},
    "null-origin": {"Origin": "null"},
    "other-port": {"Origin": "http://localhost:8001"},
    "other-scheme": {"Origin": "https://localhost"},
    "other-loopback-name": {"Origin": "http://127.0.0.1"},
}


@pytest.mark.parametrize("labels", CROSS_SITE.values(), ids=CROSS_SITE.keys())
async def test_a_change_a_browser_labels_cross_site_is_403_and_changes_nothing(
    client: httpx.AsyncClient, new_name: Callable[[], str], labels: dict[str, str]
) -> None:
    name = new_name()
    assert (await client.post(PROCESS, json={"process_name": name})).status_code == 201
    held = (await client.post(KEYS, json={"process_name": name, "machine": "m"})).json()
    before = await _keys(client, name)
    lease = f"{KEYS}/{held['external_id']}"
    attempts = [
        ("POST", PROCESS, {"process_name": new_name()}),
        ("POST", KEYS, {"process_name": name, "machine": "page"}),
        ("PATCH", lease, {"lease_seconds": 86400}),
        ("DELETE", lease, None),
        ("POST", f"{PROCESS}/{name}/passes", None),
        ("POST", f"{PROCESS}/{name}/keys/0/retry", None),
        ("DELETE", f"{PROCESS}/{name}", None),
    ]
    for method, path, body in attempts:
        response = await client.request(method, path, json=body, headers=labels)
        assert_problem(response, 403, "cross_site_request")
    assert await _keys(client, name) == before
    assert (await _process(client, name))["pass"]["number"] == 1


SAME_ORIGIN = {
    "fetch-site-same-origin": {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
    "fetch-site-none": {"Sec-Fetch-Site": "none"},
    "origin-default-port-written": {"Origin": "http://localhost:80"},
    "no-labels": {},
}


async def test_only_changes_labelled_cross_site_are_refused(
    client: httpx.AsyncClient, new_name: Callable[[], str]
) -> None:
    """Same-origin pages (the dashboard) and clients that are not browsers pass; so does a
    cross-site read, whose answer the browser hides from the page."""
    for labels in CROSS_SITE.values():
        response = await client.post(PROCESS, json={"process_name": new_name()}, headers=labels)
        assert_problem(response, 403, "cross_site_request")
        assert (await client.get(PROCESS, headers=labels)).status_code == 200
    for labels in SAME_ORIGIN.values():
        name = new_name()
        created = await client.post(PROCESS, json={"process_name": name}, headers=labels)
        assert created.status_code == 201, (labels, created.text)
        assert (await client.delete(f"{PROCESS}/{name}", headers=labels)).status_code == 200


# --- /openapi.json ------------------------------------------------------------------------


async def test_openapi_lists_the_guards_answers(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert (
        "host_not_allowed"
        in document["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
    )
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "`host_not_allowed`" in responses["421"]["description"], (path, method)
            changes = method.upper() in STATE_CHANGING
            forbidden = responses.get("403", {}).get("description", "")
            assert ("`cross_site_request`" in forbidden) == changes, (path, method)


async def test_long_hosts_are_421_and_never_kept(client: httpx.AsyncClient) -> None:
    """Parsed Host values are kept for speed, but only short ones: strangers cannot fill memory."""
    kept = browser_guard._split_known.cache_info().currsize
    for n in range(20):
        host = f"{n}{'a' * 4000}.example"
        assert_problem(await client.get(PROCESS, headers={"Host": host}), 421, "host_not_allowed")
    assert browser_guard._split_known.cache_info().currsize == kept
