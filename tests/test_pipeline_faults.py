"""The pipelined script connection under real network faults (tests/faultproxy.py): a stalled
connection never costs a pool slot, an idle reset costs no call, and whatever breaks the
transport answers 503, never 500. Each test runs on asyncio's loop and on uvloop (serve's).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.embedded import EmbeddedValkey
from coordinator.pipeline import AutoPipeline
from coordinator.store import Store
from tests.conftest import serve
from tests.faultproxy import FaultProxy
from tests.test_serve import _env, serving

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
BIG = 16 * 1024 * 1024  # more than loopback's socket buffers hold: a stalled write stays queued


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def proxy(valkey: EmbeddedValkey) -> Iterator[FaultProxy]:
    """A proxy to the session's Valkey, on a thread of its own (its resets are sent when
    reset_connections returns)."""
    with FaultProxy("127.0.0.1", valkey.port).threaded() as running:
        yield running


def _client(url: str, size: int = 64, connection_class: type[Connection] | None = None) -> Redis:
    """The client `connect` makes for `url` (serve's pool), with 0.3 s timeouts."""
    client = connect(url, Settings(redis_timeout_seconds=0.3, redis_max_connections=size))
    assert isinstance(client, Redis)
    if connection_class is not None:
        client.connection_pool.connection_class = connection_class
    return client


async def test_stalled_connections_never_use_up_the_pool(proxy: FaultProxy, prefix: str) -> None:
    async with _client(proxy.url, size=6) as client:
        pipeline = AutoPipeline.for_client(client)
        assert pipeline is not None
        for _ in range(7):
            assert await pipeline.execute("PING") == "PONG"  # connected, before the stall
            # The proxy stops reading: a call goes out and waits; the next call's big write
            # fills every buffer on the way, so closing the socket gracefully never ends.
            proxy.faults.throttle = 0
            waiting = asyncio.ensure_future(pipeline.execute("PING"))
            await until(lambda: pipeline_waits(pipeline))
            stalled = asyncio.ensure_future(pipeline.execute("SET", f"{prefix}:big", "x" * BIG))
            for call in await asyncio.gather(waiting, stalled, return_exceptions=True):
                assert isinstance(call, RedisConnectionError | RedisTimeoutError), call
            # The stall outlasts the drop's close of the socket (it does in production).
            await until(lambda: drop_finished(pipeline))
            proxy.faults.clear()
        # Seven stalls on a pool of six: every connection went back to the pool.
        assert await asyncio.wait_for(pipeline.execute("PING"), 5) == "PONG"
        store = Store(client, prefix=prefix)
        await store.register("p", 2)
        assert (await store.grant("p", "m")).key in (0, 1)
        await store.aclose()
        await pipeline.aclose()


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Poll `condition` until it holds (an AssertionError after `seconds`)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def drop_finished(pipeline: AutoPipeline) -> bool:
    """Whether the watchdog's drop of a connection has ended (closed it, or failed to)."""
    dropping = pipeline._dropping  # the stall lasts until it has
    return dropping is not None and dropping.done()


def pipeline_waits(pipeline: AutoPipeline) -> bool:
    """Whether a call has been written and waits for its reply."""
    return bool(pipeline._waiting)  # the test orders two writes by it


async def test_an_idle_reset_costs_no_call(proxy: FaultProxy, prefix: str) -> None:
    async with _client(proxy.url) as client:
        store = Store(client, prefix=prefix)
        await store.register("p", 4)
        for round_ in range(6):
            granted = await store.grant("p", f"m{round_}")
            # A middlebox resets every connection while nothing is in flight (and this
            # loop runs on, as a server's does: the reset reaches it before the next call).
            assert await asyncio.to_thread(proxy.reset_connections) >= 1
            # The next call finds its connection gone and takes another: no call fails.
            released = await store.release(granted.external_id or "")
            assert released.key == granted.key
        await store.aclose()


class _BrokenTransport(Connection):
    """A connection whose pipelined reads (the only ones without a timeout) fail, once
    `broken`, with what uvloop raises on a transport it has closed."""

    broken = False

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if _BrokenTransport.broken and kwargs.get("timeout") == math.inf:
            raise RuntimeError(
                "unable to perform operation on <TCPTransport closed=True>; the handler is closed"
            )
        return await super().read_response(*args, **kwargs)


async def test_a_transport_error_of_any_kind_answers_503(
    valkey: EmbeddedValkey, prefix: str
) -> None:
    redis = _client(valkey.url, connection_class=_BrokenTransport)
    try:
        async with serve(create_app(Settings(key_prefix=prefix), redis=redis)) as http:
            body = {"process_name": "p", "key_set_size": 1}
            assert (await http.post(API, json=body)).status_code == 201
            _BrokenTransport.broken = True
            response = await http.post(API, json={**body, "process_name": "q"})
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "store_unavailable"
    finally:
        _BrokenTransport.broken = False
        await redis.aclose()


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": False})], indirect=True)
async def test_serve_answers_after_an_idle_reset(
    valkey: EmbeddedValkey, proxy: FaultProxy, tmp_path: Path
) -> None:
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL=proxy.url)
    with serving(env) as served:  # uvicorn on uvloop, as deployed
        async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
            created = await http.post(API, json={"process_name": "idle", "key_set_size": 8})
            assert created.status_code == 201
            statuses = []
            for n in range(6):
                granted = await http.post(
                    f"{API}/batch_keys", json={"process_name": "idle", "machine": f"m{n}"}
                )
                statuses.append(granted.status_code)
                proxy.reset_connections()
            assert statuses == [201] * 6, (statuses, served.log[-2000:])
