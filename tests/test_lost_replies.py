"""A grant whose answer cannot reach its caller gives its key back at once.

Each fault is real: Valkey's replies cross tests/faultproxy.py with added latency, so a grant
script has run (seen on Valkey directly) while its reply is still on the way, and the caller
then leaves — a cancelled task, or an HTTP client that closes its socket — before it arrives.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import orjson
import pytest
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.embedded import EmbeddedValkey, free_port
from coordinator.errors import StoreUnavailable
from coordinator.models import BatchKey
from coordinator.store import Store
from tests.conftest import serve
from tests.faultproxy import FaultProxy
from tests.test_waiters import until

pytestmark = pytest.mark.anyio

LEASE_SECONDS = 60  # a stranded key would stay held far past the test
# The reply's delay: the window in which the caller leaves. Wide against a 10 ms poll.
REPLY_LATENCY = 0.6
# Back well before LEASE_SECONDS; generous for a loaded machine (about 2 latencies here).
GIVEN_BACK_WITHIN = 10


@asynccontextmanager
async def proxied_store(
    valkey: EmbeddedValkey, prefix: str
) -> AsyncIterator[tuple[Store, FaultProxy]]:
    """A store whose Valkey connections cross a fault proxy, as a replica's would."""
    async with FaultProxy("127.0.0.1", valkey.port) as proxy:
        redis = connect(proxy.url, Settings())
        try:
            store = Store(redis, prefix=prefix)
            yield store, proxy
            await store.aclose()
        finally:
            await redis.aclose()


async def held_by(direct: Store, machine: str) -> bool:
    """Whether key 0 of `p` is held by `machine`, read on Valkey itself (not through the proxy)."""
    key = await direct.batch_key("p", 0)
    return key.state == "held" and key.machine == machine


async def until_async(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    """Poll an async `check()` until it is true (bounded)."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def assert_given_back(direct: Store) -> BatchKey:
    """Key 0 of `p` is free again soon, with no attempt counted, its end recorded."""

    async def free() -> bool:
        return (await direct.batch_key("p", 0)).state == "free"

    await until_async(free, GIVEN_BACK_WITHIN)
    key = await direct.batch_key("p", 0)
    assert key.attempts == 0
    types = [event.type for event in await direct.events("p")]
    assert types[-1] == "released-interrupted", types
    return key


async def test_a_waiter_that_leaves_while_its_grant_is_in_flight_gives_the_key_back(
    valkey: EmbeddedValkey, valkey_redis: Redis, prefix: str
) -> None:
    direct = Store(valkey_redis, prefix=prefix)
    async with proxied_store(valkey, prefix) as (store, proxy):
        await store.register("p", 1, LEASE_SECONDS)
        held = await store.grant("p", "holder")
        waiter = asyncio.create_task(store.grant("p", "waiter", wait_seconds=30))
        await until(lambda: store.waiters.waiting == 1)
        proxy.faults.latency_down = REPLY_LATENCY
        assert held.external_id is not None
        await direct.release(held.external_id)  # on Valkey directly: wakes the waiter
        # Its grant has run; its reply is still crossing the proxy when its caller leaves
        # (what an HTTP disconnect does to a waiting grant).
        await until_async(lambda: held_by(direct, "waiter"))
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await assert_given_back(direct)


@contextmanager
def uvicorn_in_a_thread(app: Starlette, http: str) -> Iterator[str]:
    """Serve `app` with uvicorn's `http` protocol on uvloop, as `coordinator serve` does."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=http,  # "httptools" or "h11"
        loop="uvloop",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield base
    finally:
        server.should_exit = True
        thread.join(20)


def grant_request(port: int, wait_seconds: int = 0) -> bytes:
    body = orjson.dumps({"process_name": "p", "machine": "gone", "wait_seconds": wait_seconds})
    return (
        b"POST /api/v1/process/batch_keys HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_an_http_grant_whose_client_has_gone_gives_its_key_back(
    valkey: EmbeddedValkey, valkey_redis: Redis, prefix: str, http: str
) -> None:
    direct = Store(valkey_redis, prefix=prefix)
    await direct.register("p", 1, LEASE_SECONDS)
    with FaultProxy("127.0.0.1", valkey.port).threaded() as proxy:
        app = create_app(Settings(key_prefix=prefix, redis_url=proxy.url, log_level="warning"))
        with uvicorn_in_a_thread(app, http) as base:
            proxy.faults.latency_down = REPLY_LATENCY
            port = int(base.rsplit(":", 1)[1])
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(grant_request(port))
            # The grant has run; the client hangs up before its answer is back.
            await until_async(lambda: held_by(direct, "gone"))
            client.close()
            await assert_given_back(direct)
            # The server is fine and the key grantable by the next caller.
            proxy.faults.clear()
            async with httpx.AsyncClient(base_url=base) as fine:
                answer = await fine.post(
                    "/api/v1/process/batch_keys", json={"process_name": "p", "machine": "next"}
                )
            assert answer.status_code == 201, answer.text


async def test_a_grant_answered_too_late_for_its_lease_is_given_back_and_unavailable(
    valkey: EmbeddedValkey, valkey_redis: Redis, prefix: str
) -> None:
    direct = Store(valkey_redis, prefix=prefix)
    async with proxied_store(valkey, prefix) as (store, proxy):
        await store.register("p", 1, LEASE_SECONDS)
        # A 2 s lease keeps 0.5 s of margin; its answer 1.6 s late leaves 0.4 s: of no use.
        proxy.faults.latency_down = 1.6
        with pytest.raises(StoreUnavailable, match="too late for its 2 s lease"):
            await store.grant("p", "late", lease_seconds=2)
        # Given back while still live (the release ran before the lease's end): as it was.
        await assert_given_back(direct)
        # The same delay on a lease with room to spare is a lease.
        granted = await store.grant("p", "in-time", lease_seconds=4)
        assert granted.machine == "in-time"


async def test_a_late_http_grant_answers_503_with_retry_after(
    valkey: EmbeddedValkey, prefix: str
) -> None:
    async with FaultProxy("127.0.0.1", valkey.port) as proxy:
        redis = connect(proxy.url, Settings())
        app = create_app(Settings(key_prefix=prefix), redis=redis)
        try:
            async with serve(app) as client:
                created = await client.post(
                    "/api/v1/process", json={"process_name": "p", "key_set_size": 1}
                )
                assert created.status_code == 201, created.text
                proxy.faults.latency_down = 1.6
                answer = await client.post(
                    "/api/v1/process/batch_keys",
                    json={"process_name": "p", "machine": "late", "lease_seconds": 2},
                )
                assert answer.status_code == 503, answer.text
                assert answer.json()["code"] == "store_unavailable"
                assert answer.headers["Retry-After"] == "1"
        finally:
            await redis.aclose()
