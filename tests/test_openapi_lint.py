"""/openapi.json as linters and generators read it: a valid OpenAPI 3.1 document that says
which routes are open, where the API is, under what license, and what each operation can
answer, for every route the app serves.

Each point is checked against the app's own behaviour (a route the document calls open answers
without a token, one it guards answers 401), so the document cannot drift from the service.
"""

from __future__ import annotations

import re
import tomllib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from coordinator import metrics
from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from tests.conftest import serve

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
METHODS = {"get", "post", "put", "patch", "delete"}
ADMIN, ADMIN_LINE = new_token("admin")
# A value for each path template variable, so every operation can be called.
PATH_VALUES = {"process_name": "lint-probe", "id": str(uuid.uuid4()), "key": "0", "number": "1"}


@pytest.fixture
async def guarded(prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a token configured, on a fakeredis[lua] of its own."""
    redis = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with (
        redis,
        serve(create_app(Settings(key_prefix=prefix, tokens=ADMIN_LINE), redis=redis)) as client,
    ):
        yield client


async def _document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: PATH_VALUES[match.group(1)], path)


async def test_the_document_is_valid_with_servers_and_a_license(
    guarded: httpx.AsyncClient,
) -> None:
    document = await _document(guarded)
    validate(document)  # raises on anything OpenAPI 3.1 forbids
    # Relative, so the document is right on every replica and behind every proxy.
    assert document["servers"] == [{"url": "/"}]
    # The license the package declares, spelled as SPDX in both.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert document["info"]["license"]["identifier"] == project["license"]
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


async def test_every_served_route_is_described_with_the_problems_it_can_answer(
    guarded: httpx.AsyncClient,
) -> None:
    document = await _document(guarded)
    app = create_app(Settings(tokens=ADMIN_LINE), redis=fakeredis.FakeAsyncRedis())
    served = {
        (re.sub(r"\{\w+\}", "{}", route.path), method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    # The document may name a template variable otherwise than the route does (OpenAPI holds
    # /batch_keys/{a} and /batch_keys/{b} to be one path), so both are compared as {}.
    described = {(re.sub(r"\{\w+\}", "{}", p), m) for p, m, _ in _operations(document)}
    assert described == served
    assert {metrics.PATH, "/ui", "/"} <= {path for path, _ in described}
    codes = document["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
    for path, method, operation in _operations(document):
        statuses = [int(status) for status in operation["responses"]]
        assert any(400 <= status < 500 for status in statuses), (method, path)
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                named = re.findall(r"`(\w+)`", response["description"])
                assert named, (method, path, status)
                assert set(named) <= set(codes), (method, path, status)


async def test_open_routes_say_so_and_guarded_routes_take_a_token(
    guarded: httpx.AsyncClient,
) -> None:
    document = await _document(guarded)
    opened: list[str] = []
    for path, method, operation in _operations(document):
        # Linters ask every operation to say: [] is open, else the bearer token it takes.
        assert "security" in operation, (method, path)
        response = await guarded.request(method, _url(path))
        if operation["security"] == []:
            assert response.status_code != 401, (method, path, response.text)
            opened.append(path)
        else:
            assert {"bearer": []} in operation["security"], (method, path)
            assert response.status_code == 401, (method, path, response.text)
    assert sorted(opened) == sorted(["/healthz", "/readyz", "/openapi.json", "/ui", "/"])


async def test_metrics_is_described_in_the_media_type_it_answers(
    guarded: httpx.AsyncClient,
) -> None:
    document = await _document(guarded)
    described = document["paths"][metrics.PATH]["get"]["responses"]["200"]["content"]
    response = await guarded.get(metrics.PATH, headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    assert list(described) == [response.headers["content-type"]]
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
