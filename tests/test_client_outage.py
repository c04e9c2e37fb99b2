"""The clients ride out outages: a restarted API, a restarted Valkey, lost answers, a budget."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.client import (
    AsyncHttpCoordinator,
    AsyncRedisCoordinator,
    HttpCoordinator,
    OutageTooLong,
    ServiceUnreachable,
    StoreUnavailable,
)
from coordinator.client.outage import BACKOFF_CAP_SECONDS, backoff_seconds, outage_budget
from coordinator.embedded import EmbeddedValkey, free_port
from tests.faultproxy import FaultProxy
from tests.test_lease_interrupted import start_and_keep
from tests.test_serve import _env

PREFIX = f"outage{uuid.uuid4().hex[:8]}"
# Stopped this long, plus the ~1.5 s `serve` takes to start: a deploy of about 3 s.
OUTAGE_SECONDS = 1.5


def _name() -> str:
    return f"job-{uuid.uuid4().hex[:10]}"


class RestartableApi:
    """`coordinator serve` on one fixed port, stopped and started again as a deploy does."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._env, self._log = env, log
        self._process: subprocess.Popen[bytes] | None = None
        self.exit_status: int | None = None  # of the last stop
        self.stopped_in = 0.0  # seconds the last stop took, SIGTERM to exit

    @property
    def log(self) -> str:
        return self._log.read_text()

    def start(self) -> None:
        with self._log.open("ab") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "coordinator.cli", "serve", "--port", str(self.port)],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self._process.poll() is None, self._log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            assert time.monotonic() < deadline, "coordinator serve did not become ready"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as a deploy sends it; waits for the exit (`exit_status`, `stopped_in`)."""
        if self._process is not None and self._process.poll() is None:
            began = time.monotonic()
            self._process.send_signal(signal.SIGTERM)
            self.exit_status = self._process.wait(30)
            self.stopped_in = time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL, for a test that failed midway."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def start_after(self, seconds: float) -> threading.Thread:
        """Start again `seconds` from now, on a thread: the outage the caller rides."""

        def later() -> None:
            time.sleep(seconds)
            self.start()

        thread = threading.Thread(target=later, name="restart-api")
        thread.start()
        return thread


@pytest.fixture(scope="module")
def api(
    valkey: EmbeddedValkey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RestartableApi]:
    data = tmp_path_factory.mktemp("outage") / "data"
    env = _env(data, COORDINATOR_REDIS_URL=valkey.url, COORDINATOR_KEY_PREFIX=PREFIX)
    served = RestartableApi(env, data.parent / "serve.log")
    served.start()
    try:
        yield served
    finally:
        served.stop()


def _outage_lines(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """How many outages the client logged as begun, and as over."""
    messages = [r.getMessage() for r in caplog.records if r.name == "coordinator.client.outage"]
    return (
        sum("unreachable, retrying for up to" in m for m in messages),
        sum("answers again" in m for m in messages),
    )


def test_a_worker_cycle_rides_out_api_restarts(
    api: RestartableApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Acquire, renew and a lease's release each sent while the API is down for a deploy."""
    caplog.set_level(logging.INFO, logger="coordinator.client")
    name = _name()
    with HttpCoordinator(api.base, timeout=5) as coordinator:
        coordinator.register(name, 2, lease_seconds=60)

        api.stop()
        restart = api.start_after(OUTAGE_SECONDS)
        began = time.monotonic()
        key = coordinator.acquire(name, "m")  # sent while down: answered once it is back
        restart.join()
        assert time.monotonic() - began >= OUTAGE_SECONDS
        assert key.key == 0

        api.stop()
        restart = api.start_after(OUTAGE_SECONDS)
        renewed = coordinator.renew(key.external_id or "", lease_seconds=120)
        restart.join()
        assert renewed.expires_at is not None
        assert key.expires_at is not None
        assert renewed.expires_at > key.expires_at
        coordinator.release(key.external_id or "")

        with coordinator.lease(name, "m") as lease:
            api.stop()
            restart = api.start_after(OUTAGE_SECONDS)
        # The block's release was sent to a stopped API; it is done once the API is back.
        restart.join()
        assert not any(k.held for k in coordinator.keys(name))
        assert coordinator.key(name, lease.key).last_completed_at is not None
    # One line when each outage began and one when it ended, not one per attempt.
    assert _outage_lines(caplog) == (3, 3)


@pytest.mark.anyio
async def test_a_grant_whose_answers_are_lost_takes_one_key(api: RestartableApi) -> None:
    """Answers lost for longer than a few quick retries: the grant is sent again with its
    request_id until one arrives, and the server answers the lease it already granted."""
    name = _name()
    async with AsyncHttpCoordinator(api.base) as admin:
        await admin.register(name, 3)
        async with FaultProxy("127.0.0.1", api.port) as proxy:
            # Every request reaches the API; every answer is cut by a reset halfway through.
            proxy.faults.reset_mid_reply = True
            async with AsyncHttpCoordinator(f"http://127.0.0.1:{proxy.port}") as client:
                grant = asyncio.create_task(client.acquire(name, "m"))
                deadline = time.monotonic() + 10
                # At least 4 answers lost (one connection each), for 2 s at least.
                while proxy.accepted < 5 or time.monotonic() < deadline - 8:
                    assert not grant.done(), grant
                    assert time.monotonic() < deadline, "the grant was not sent again"
                    await asyncio.sleep(0.05)
                proxy.faults.clear()
                key = await grant
        assert key.replayed  # the answer to an earlier attempt's lease, not a new grant
        held = [k for k in await admin.keys(name) if k.held]
        assert [(k.key, k.external_id) for k in held] == [(key.key, key.external_id)]


@pytest.mark.anyio
async def test_a_pass_start_whose_answers_are_lost_starts_one_pass(api: RestartableApi) -> None:
    """`start_pass(after=N)` is safe to send again, so its lost answers are retried: the pass
    starts once, and the retry that is answered says so (the pass after N)."""
    name = _name()
    async with AsyncHttpCoordinator(api.base) as admin:
        await admin.register(name, 2, mode="once")
        async with FaultProxy("127.0.0.1", api.port) as proxy:
            proxy.faults.reset_mid_reply = True  # each start runs; its answer is cut
            async with AsyncHttpCoordinator(f"http://127.0.0.1:{proxy.port}") as client:
                start = asyncio.create_task(client.start_pass(name, after=1))
                deadline = time.monotonic() + 10
                while proxy.accepted < 3:  # two answers lost at least
                    assert not start.done(), start
                    assert time.monotonic() < deadline, "the start was not sent again"
                    await asyncio.sleep(0.02)
                proxy.faults.clear()
                started = await start
        assert started.pass_ is not None
        assert started.pass_.number == 2
        events = await admin.events(name)
        assert [e.type for e in events].count("pass-started") == 1


@pytest.mark.anyio
async def test_the_outage_budget_ends_retrying_with_outage_too_long() -> None:
    """No server at all: retried for about the budget, then one clear error."""
    base = f"http://127.0.0.1:{free_port()}"
    async with AsyncHttpCoordinator(base, outage_budget_seconds=1) as client:
        began = time.monotonic()
        with pytest.raises(OutageTooLong) as caught:
            await client.acquire(_name(), "m")
        took = time.monotonic() - began
    assert 1 <= took < 1 + BACKOFF_CAP_SECONDS  # not at once, and not for ever
    assert isinstance(caught.value, StoreUnavailable)  # `except StoreUnavailable` still holds
    assert isinstance(caught.value.last_error, ServiceUnreachable)
    assert caught.value.code == "outage_too_long"
    message = str(caught.value)
    assert f"the service at {base} stayed unreachable for 1 s (the outage budget" in message
    assert "COORDINATOR_OUTAGE_BUDGET_SECONDS" in message


def test_the_budget_comes_from_the_argument_the_environment_or_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COORDINATOR_OUTAGE_BUDGET_SECONDS", raising=False)
    assert outage_budget() == 300
    monkeypatch.setenv("COORDINATOR_OUTAGE_BUDGET_SECONDS", "42.5")
    assert outage_budget() == 42.5
    assert outage_budget(7) == 7
    assert all(0 <= backoff_seconds(n) <= BACKOFF_CAP_SECONDS for n in range(100))


@pytest.fixture
async def own_valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    """A Valkey of this test's own, so stopping it stops nobody else."""
    server = EmbeddedValkey(tmp_path / "valkey", appendfsync="always")
    with server:
        yield server


@pytest.mark.anyio
async def test_a_direct_worker_rides_out_a_valkey_restart(own_valkey: EmbeddedValkey) -> None:
    name = _name()
    async with AsyncRedisCoordinator(own_valkey.url, prefix=PREFIX) as client:
        await client.register(name, 2, lease_seconds=60)

        done = threading.Event()  # the restarting threads live until the test ends
        keepers: list[threading.Thread] = []

        def restart_in(seconds: float) -> None:
            own_valkey.stop()
            keepers.append(
                threading.Thread(target=start_and_keep, args=(own_valkey, seconds, done))
            )
            keepers[-1].start()

        try:
            restart_in(1.0)
            key = await client.acquire(name, "m")  # sent while Valkey is down
            assert key.key == 0
            async with client.lease(name, "m") as lease:
                restart_in(1.0)  # the block's release is sent while Valkey is down
            released = await client.key(name, lease.key)
            assert not released.held
            assert released.last_completed_at is not None
        finally:
            done.set()
            for keeper in keepers:
                keeper.join()
