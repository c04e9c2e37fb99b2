"""Leaving a lease block by an interruption releases `interrupted`, not `failed`: the key keeps
its checkpoint and counts no attempt, so a stopped worker never quarantines a healthy key."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from coordinator.client import AsyncRedisCoordinator, RedisCoordinator
from coordinator.embedded import EmbeddedValkey
from coordinator.models import BatchKey

PREFIX = f"interrupted{uuid.uuid4().hex[:8]}"
CHECKPOINT = "row 41"


def _name() -> str:
    return f"job-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client(valkey: EmbeddedValkey) -> AsyncIterator[AsyncRedisCoordinator]:
    async with AsyncRedisCoordinator(valkey.url, prefix=PREFIX) as coordinator:
        yield coordinator


def _assert_put_back(key: BatchKey) -> None:
    """Released `interrupted`: free again, no attempt counted, the checkpoint kept."""
    assert not key.held
    assert key.state == "free"
    assert key.attempts == 0
    assert key.checkpoint == CHECKPOINT


async def _events(client: AsyncRedisCoordinator, name: str) -> list[str]:
    return [event.type for event in await client.events(name)]


@pytest.mark.anyio
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
async def test_leaving_by_an_interruption_releases_interrupted(
    client: AsyncRedisCoordinator, interruption: type[BaseException]
) -> None:
    name = _name()
    await client.register(name, 2, mode="once", max_attempts=1)
    with pytest.raises(interruption):
        async with client.lease(name, "m") as lease:
            lease.save_checkpoints_from(lambda: CHECKPOINT)
            raise interruption
    # At max_attempts 1 a `failed` release would have quarantined the key.
    _assert_put_back(await client.key(name, lease.key))
    assert "released-interrupted" in await _events(client, name)
    again = await client.acquire(name, "m")
    assert again.key == lease.key  # back at its old place: the first key granted again
    assert again.checkpoint == CHECKPOINT


@pytest.mark.anyio
@pytest.mark.parametrize("cancels", [1, 2], ids=["cancelled", "cancelled-while-releasing"])
async def test_a_cancelled_task_releases_interrupted(
    client: AsyncRedisCoordinator, cancels: int
) -> None:
    """The CancelledError goes up, and the release is sent even when a second cancellation
    lands while the block is being left (a task group giving up, a second Ctrl-C)."""
    name = _name()
    await client.register(name, 1, mode="once", max_attempts=1)
    held = asyncio.Event()

    async def work() -> None:
        async with client.lease(name, "m") as lease:
            lease.save_checkpoints_from(lambda: CHECKPOINT)
            held.set()
            await asyncio.Event().wait()  # working until cancelled

    task = asyncio.create_task(work())
    await held.wait()
    task.cancel()
    for _ in range(cancels - 1):
        await asyncio.sleep(0)  # the task is leaving the block now: cut that short too
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while (key := await client.key(name, 0)).held:
        assert time.monotonic() < deadline, "the cancelled task's release was never sent"
        await asyncio.sleep(0.02)
    _assert_put_back(key)


@pytest.fixture
def real_ctrl_c() -> Iterator[None]:
    """SIGINT raising KeyboardInterrupt as in a terminal, even if the suite runs with it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("real_ctrl_c")
def test_ctrl_c_in_a_blocking_lease_releases_interrupted(valkey: EmbeddedValkey) -> None:
    name = _name()
    with RedisCoordinator(valkey.url, prefix=PREFIX) as coordinator:
        coordinator.register(name, 1, mode="once", max_attempts=1)
        with pytest.raises(KeyboardInterrupt), coordinator.lease(name, "m") as lease:
            lease.checkpoint(CHECKPOINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # the work, cut short by the signal
        _assert_put_back(coordinator.key(name, lease.key))


@pytest.mark.usefixtures("real_ctrl_c")
def test_a_second_ctrl_c_while_releasing_still_releases(tmp_path: Path) -> None:
    """Ctrl-C, then Ctrl-C again while the release waits out an outage of Valkey: the
    blocking client keeps waiting for the release rather than abandoning the key."""
    name = _name()
    server = EmbeddedValkey(tmp_path / "valkey", appendfsync="always")
    with server, RedisCoordinator(server.url, prefix=PREFIX) as coordinator:
        coordinator.register(name, 1, mode="once", max_attempts=1)
        second_ctrl_c = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        done = threading.Event()
        back = threading.Thread(target=start_and_keep, args=(server, 1.5, done))
        try:
            with pytest.raises(KeyboardInterrupt), coordinator.lease(name, "m") as lease:
                lease.checkpoint(CHECKPOINT)
                server.stop()  # the release that Ctrl-C starts must wait for Valkey
                second_ctrl_c.start()
                back.start()
                raise KeyboardInterrupt  # the first Ctrl-C
        finally:
            second_ctrl_c.join()
        _assert_put_back(coordinator.key(name, lease.key))
        done.set()
        back.join()


def start_and_keep(server: EmbeddedValkey, after: float, done: threading.Event) -> None:
    """Start `server` in `after` seconds, and keep this thread alive until `done`: Valkey is
    told to stop when the thread that started it ends (PR_SET_PDEATHSIG)."""
    time.sleep(after)
    server.start()
    done.wait(60)
