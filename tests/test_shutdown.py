"""SIGTERM on `coordinator serve` fits an orchestrator's grace period.

A real `coordinator serve` on the session's Valkey: twenty grants wait for a key, a pass wait
waits for its pass, and a listing of 50,000 keys is half read by its client when SIGTERM
comes. The waits are answered 503 with Retry-After at once, the listing is answered whole,
and the process exits 0 within the documented bound.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from coordinator.cli.serve import SHUTDOWN_BOUND_SECONDS
from coordinator.embedded import EmbeddedValkey
from tests.test_serve import _env, serving

pytestmark = pytest.mark.anyio

WAITERS = 20
WAIT_SECONDS = 30  # far past the test: a wait answered is a wait ended by the shutdown
LISTED_KEYS = 50_000  # a listing streamed in chunks, long enough to be caught mid-way
# "At once", with room for a loaded 2-core machine (measured: see the printed figures).
ANSWERED_WITHIN_SECONDS = 3


async def calls(redis: Redis, command: str) -> int:
    """How many times Valkey has run `command` (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def until_calls(redis: Redis, command: str, at_least: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while await calls(redis, command) < at_least:
        assert time.monotonic() < deadline, f"Valkey never saw {at_least} {command}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_answers_waits_503_at_once_finishes_in_flight_calls_and_exits(
    tmp_path: Path, valkey: EmbeddedValkey, valkey_redis: Redis, prefix: str, workers: str
) -> None:
    env = _env(
        tmp_path / "data",
        COORDINATOR_REDIS_URL=valkey.url,
        COORDINATOR_KEY_PREFIX=prefix,
        COORDINATOR_LOG_LEVEL="warning",
    )
    with serving(env, "--workers", workers) as served:
        async with httpx.AsyncClient(base_url=served.base, timeout=WAIT_SECONDS + 10) as http:
            for name, size in (("busy", 1), ("big", LISTED_KEYS)):
                created = await http.post(
                    "/api/v1/process",
                    json={"process_name": name, "key_set_size": size, "mode": "once"},
                )
                assert created.status_code == 201, created.text
            held = await http.post(
                "/api/v1/process/batch_keys", json={"process_name": "busy", "machine": "h"}
            )
            assert held.status_code == 201, held.text

            grants_before = await calls(valkey_redis, "evalsha")
            waiting = [
                asyncio.create_task(
                    http.post(
                        "/api/v1/process/batch_keys",
                        json={
                            "process_name": "busy",
                            "machine": f"w{n}",
                            "wait_seconds": WAIT_SECONDS,
                        },
                    )
                )
                for n in range(WAITERS)
            ]
            xreads = await calls(valkey_redis, "xread")
            waiting.append(
                asyncio.create_task(
                    http.get("/api/v1/process/busy/passes/1", params={"wait_seconds": WAIT_SECONDS})
                )
            )
            # Every grant found the key held, and the pass wait blocks on the history.
            await until_calls(valkey_redis, "evalsha", grants_before + WAITERS)
            await until_calls(valkey_redis, "xread", xreads + 1)

            # A listing whose answer has begun and is read slowly: in flight at the signal.
            async with http.stream("GET", "/api/v1/process/batch_keys/big") as listing:
                assert listing.status_code == 200
                chunks = listing.aiter_bytes()
                body = [await anext(chunks)]
                signalled = time.monotonic()
                served.process.send_signal(signal.SIGTERM)
                done, _ = await asyncio.wait(waiting, timeout=ANSWERED_WITHIN_SECONDS)
                answered_in = time.monotonic() - signalled
                assert len(done) == len(waiting), f"{len(done)} of {len(waiting)} answered"
                for task in waiting:
                    answer = task.result()
                    assert answer.status_code == 503, answer.text
                    assert answer.json()["code"] == "store_unavailable"
                    assert answer.headers["Retry-After"] == "1"

                body.extend([chunk async for chunk in chunks])
            listed = orjson.loads(b"".join(body))
            assert [key["key"] for key in listed] == list(range(LISTED_KEYS))

            exit_code = await asyncio.to_thread(served.process.wait, SHUTDOWN_BOUND_SECONDS + 5)
            exited_in = time.monotonic() - signalled
            print(
                f"\nSIGTERM, {workers} worker(s): {len(waiting)} waits answered 503 within"
                f" {answered_in:.3f} s, a listing in flight answered whole,"
                f" exit {exit_code} after {exited_in:.2f} s"
            )
            assert exit_code == 0, served.log
            assert exited_in < SHUTDOWN_BOUND_SECONDS
