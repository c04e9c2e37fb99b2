"""Auto-pipelining (coordinator/pipeline.py) on a real Valkey: concurrent script calls share
one connection, each gets its own reply in order, and a failure reaches exactly the calls it
concerns before the next call connects again.

The Valkey here is this module's own: one test stops it with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from coordinator.embedded import EmbeddedValkey
from coordinator.errors import StoreUnavailable, UnknownLease
from coordinator.pipeline import AutoPipeline, pack
from coordinator.store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(Path(tmp_path_factory.mktemp("pipeline-valkey"))) as valkey:
        yield valkey


@pytest.fixture
async def client(server: EmbeddedValkey) -> AsyncIterator[Redis]:
    async with Redis.from_url(server.url, decode_responses=True, socket_timeout=1) as redis:
        yield redis


async def _connections_received(redis: Redis) -> int:
    stats = await redis.info("stats")
    return int(stats["total_connections_received"])


def test_pack_writes_resp_bulk_strings() -> None:
    assert pack(("EVALSHA", "ab", 1, "k", -2, "é")) == (
        b"*6\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$2\r\n-2\r\n$2\r\n\xc3\xa9\r\n"
    )


def test_a_cluster_or_fakeredis_client_keeps_the_pool() -> None:
    import fakeredis  # noqa: PLC0415 - only here

    assert AutoPipeline.for_client(fakeredis.FakeAsyncRedis(decode_responses=True)) is None
    assert AutoPipeline.for_client(Redis()) is None  # bytes replies: not the store's client
    assert AutoPipeline.for_client(Redis(decode_responses=True)) is not None


async def test_concurrent_calls_share_one_connection(client: Redis, prefix: str) -> None:
    store = Store(client, prefix=prefix)
    assert store.scripts.pipelined
    await store.register("p", 300)
    # One lease first: its release caches the process's name (read once, by the pool).
    first = await store.grant("p", "m")
    await store.release(first.external_id or "")
    before = await _connections_received(client)
    granted = await asyncio.gather(*(store.grant("p", f"m{i}") for i in range(300)))
    released = await asyncio.gather(*(store.release(k.external_id or "") for k in granted))
    # Each call got its own answer: 300 different keys, each released by its own lease.
    assert sorted(k.key for k in granted) == list(range(300))
    assert [(r.key, r.fencing_token) for r in released] == [
        (g.key, g.fencing_token) for g in granted
    ]
    # One connection for all 600 calls (the stats read is a pooled connection of its own);
    # a pool would have opened one per concurrent call, up to its size.
    assert await _connections_received(client) - before <= 2
    await store.aclose()


async def test_an_error_reply_fails_only_its_own_call(client: Redis, prefix: str) -> None:
    store = Store(client, prefix=prefix)
    pipeline = AutoPipeline.for_client(client)
    assert pipeline is not None
    await client.set(f"{prefix}:a-string", "x")
    replies = await asyncio.gather(
        pipeline.execute("PING"),
        pipeline.execute("LPUSH", f"{prefix}:a-string", "y"),  # WRONGTYPE
        pipeline.execute("ECHO", "after"),
        return_exceptions=True,
    )
    assert replies[0] == "PONG"
    assert isinstance(replies[1], Exception)
    assert str(replies[1]).startswith("WRONGTYPE")
    assert replies[2] == "after"
    await pipeline.aclose()
    await store.aclose()


async def test_a_cancelled_call_does_not_shift_the_replies(client: Redis, prefix: str) -> None:
    pipeline = AutoPipeline.for_client(client)
    assert pipeline is not None
    # The first call's reply is slow to come (a 0.3 s blocking pop); it is cancelled meanwhile.
    slow = asyncio.ensure_future(pipeline.execute("BLPOP", f"{prefix}:nothing", "0.3"))
    echoes = [asyncio.ensure_future(pipeline.execute("ECHO", str(i))) for i in range(20)]
    await asyncio.sleep(0.05)
    slow.cancel()
    assert await asyncio.gather(*echoes) == [str(i) for i in range(20)]
    assert await pipeline.execute("ECHO", "next") == "next"
    await pipeline.aclose()


async def test_a_killed_connection_fails_its_calls_and_the_next_call_reconnects(
    client: Redis, prefix: str
) -> None:
    store = Store(client, prefix=prefix)
    # Keys to spare: a grant that ran before the kill took its key though its reply was lost.
    await store.register("p", 8)
    await store.grant("p", "m")  # the pipeline's connection is open
    in_flight = [asyncio.ensure_future(store.grant("p", "m")) for _ in range(3)]
    in_flight.append(
        asyncio.ensure_future(client.execute_command("CLIENT", "KILL", "TYPE", "normal"))
    )
    results = await asyncio.gather(*in_flight, return_exceptions=True)
    # Killed before or after their replies: each grant either got a key or says why not.
    for result in results[:3]:
        assert not isinstance(result, Exception) or isinstance(result, StoreUnavailable), result
    after = await store.grant("p", "m")
    assert after.key in range(8)
    with pytest.raises(UnknownLease):
        await store.release("not-a-lease")
    await store.aclose()


async def test_a_stopped_server_times_out_every_call_then_recovers(
    server: EmbeddedValkey, client: Redis, prefix: str
) -> None:
    store = Store(client, prefix=prefix)
    await store.register("p", 8)
    await store.grant("p", "m")
    pid = int((await client.info("server"))["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        calls = [asyncio.ensure_future(store.grant("p", "m")) for _ in range(5)]
        done, _ = await asyncio.wait(calls, timeout=5)  # socket_timeout is 1 s
        assert len(done) == 5
        for call in done:
            assert isinstance(call.exception(), StoreUnavailable)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (await store.grant("p", "m")).key in range(8)
    await store.aclose()


async def test_a_flushed_script_cache_is_reloaded(client: Redis, prefix: str) -> None:
    store = Store(client, prefix=prefix)
    await store.register("p", 2)
    await client.script_flush()
    assert (await store.grant("p", "m")).key in (0, 1)
    await store.aclose()
