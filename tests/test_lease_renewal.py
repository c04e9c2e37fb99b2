"""A lease whose renewals fail is believed held until its local deadline, then lost: never longer.

The deadline is the instant the last successful grant or renewal was sent (this machine's
monotonic clock) plus the lease's length minus a safety margin: 1.5 s for these 2 s leases,
whose server-side expiry is half a second later. Writes are refused by a private Valkey told
`min-replicas-to-write 1` with no replica (every script answers NOREPLICAS), by an API
in-process that answers renewals 503 or never answers them, or by a real `coordinator serve`
stopped with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis
from starlette.applications import Starlette

from coordinator.app import create_app
from coordinator.client import (
    AsyncHttpCoordinator,
    HttpCoordinator,
    LeaseLost,
    RedisCoordinator,
    StoreUnavailable,
)
from coordinator.client.lease import safety_margin
from coordinator.config import Settings
from coordinator.embedded import EmbeddedValkey
from coordinator.problems import problem
from tests.test_cli import CLI, _clean_env
from tests.test_serve import _env, serving

LEASE_SECONDS = 2
BELIEVED_SECONDS = 1.5  # the 2 s lease less its 0.5 s margin
PREFIX = f"renewal{uuid.uuid4().hex[:8]}"


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey of this test's own: it will be told to refuse every write."""
    with EmbeddedValkey(tmp_path / "valkey") as server:
        yield server


@pytest.fixture
def admin(private_valkey: EmbeddedValkey) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(private_valkey.url, decode_responses=True) as client:
        yield client


def refuse_writes(admin: redis.Redis, refuse: bool) -> None:
    """With no replica attached, `min-replicas-to-write 1` makes every write NOREPLICAS."""
    admin.config_set("min-replicas-to-write", 1 if refuse else 0)


def refusals(admin: redis.Redis) -> int:
    """How many NOREPLICAS replies the server has sent: one per refused renewal."""
    stats: dict[str, dict[str, int]] = admin.info("errorstats")
    return int(stats.get("errorstat_NOREPLICAS", {}).get("count", 0))


def poll(condition: Callable[[], bool], until: float, what: str) -> None:
    while not condition():
        assert time.monotonic() < until, what
        time.sleep(0.01)


def test_the_margin_is_a_tenth_at_least_half_a_second_at_most_a_quarter() -> None:
    assert LEASE_SECONDS - safety_margin(LEASE_SECONDS) == BELIEVED_SECONDS
    assert safety_margin(1) == 0.25
    assert safety_margin(60) == 6


def test_refused_renewals_keep_a_direct_lease_only_until_its_deadline(
    private_valkey: EmbeddedValkey, admin: redis.Redis
) -> None:
    name = "refused"
    with (
        RedisCoordinator(private_valkey.url, prefix=PREFIX) as coordinator,
        RedisCoordinator(private_valkey.url, prefix=PREFIX) as other,
    ):
        coordinator.register(name, 1, LEASE_SECONDS)
        before = time.monotonic()
        with pytest.raises(LeaseLost), coordinator.lease(name, "holder") as lease:
            entered = time.monotonic()
            refuse_writes(admin, refuse=True)  # before the first renewal, a third of the way
            # Until the deadline: held, and the renewer retries after each refusal, sooner
            # than every third of the lease; it did not die on the first.
            poll(lambda: refusals(admin) >= 1, before + 1.2, "no renewal was tried")
            first = refusals(admin)
            poll(lambda: refusals(admin) >= first + 2, before + 1.4, "renewals stopped")
            assert not lease.lost
            lease.check()

            # At the deadline (the grant was sent by `entered`): lost, while the server still
            # counts the lease for another half second. Never believed held past its expiry.
            time.sleep(max(0.0, entered + BELIEVED_SECONDS - time.monotonic()))
            assert lease.lost
            with pytest.raises(LeaseLost) as caught:
                lease.check()
            assert "NOREPLICAS" in repr(caught.value.__cause__)
            assert coordinator.keys(name)[0].external_id == lease.external_id

            # Writes come back; another worker is granted the key once it expires.
            refuse_writes(admin, refuse=False)
            granted = other.acquire(name, "other", wait_seconds=5)
            assert granted.key == lease.key
            assert (granted.fencing_token or 0) > lease.fencing_token
            assert lease.lost
            with pytest.raises(LeaseLost):
                lease.check()
        # Leaving raised LeaseLost; our release did not touch the new holder's lease.
        (key,) = other.keys(name)
        assert key.external_id == granted.external_id
        assert key.last_completed_at is None


def test_a_grant_that_waited_longer_than_the_margin_allows_is_still_held(
    valkey: EmbeddedValkey,
) -> None:
    """Counted from its request, a grant after a 2 s wait would be past its deadline already:
    the lease renews at once, from a later instant, before the block starts."""
    name = f"waited-{uuid.uuid4().hex[:8]}"
    with RedisCoordinator(valkey.url, prefix=PREFIX) as coordinator:
        coordinator.register(name, 1, LEASE_SECONDS)
        coordinator.acquire(name, "holder")  # never renewed: it expires in 2 s
        asked = time.monotonic()
        with coordinator.lease(name, "waiter", wait_seconds=5) as lease:
            assert time.monotonic() - asked > BELIEVED_SECONDS
            assert not lease.lost
            lease.check()
        assert coordinator.keys(name)[0].last_completed_at is not None


class RefusingApi:
    """The API in-process, with a switch that answers renewals 503 or never answers them."""

    def __init__(self, app: Starlette, state: dict[str, Any]) -> None:
        self.app, self.state = app, state
        self.answer: str | None = None  # None: the real API; "503"; "nothing"
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "PATCH" and self.answer:
            self.refused += 1
            if self.answer == "nothing":
                await asyncio.Event().wait()  # hangs until the client gives up
            detail = "Redis did not answer: NOREPLICAS Not enough good replicas to write."
            await problem("store_unavailable", detail, {"Retry-After": "1"})(scope, receive, send)
            return
        scope["state"] = self.state
        await self.app(scope, receive, send)


@asynccontextmanager
async def refusing_api(app: Starlette) -> AsyncIterator[RefusingApi]:
    async with app.router.lifespan_context(app) as state:
        yield RefusingApi(app, dict(state or {}))


@pytest.mark.anyio
@pytest.mark.parametrize("answer", ["503", "nothing"])
async def test_an_http_lease_is_lost_at_its_deadline_while_renewals_fail(
    answer: str, valkey: EmbeddedValkey, prefix: str
) -> None:
    name = f"http-{answer}"
    async with (
        Redis.from_url(valkey.url, decode_responses=True) as client,
        refusing_api(create_app(Settings(key_prefix=prefix), redis=client)) as api,
        AsyncHttpCoordinator("http://localhost", transport=httpx.ASGITransport(api)) as http,
    ):
        await http.register(name, 1, LEASE_SECONDS)
        before = time.monotonic()
        with pytest.raises(LeaseLost):
            async with http.lease(name, "holder") as lease:
                entered = time.monotonic()
                api.answer = answer
                tries = 3 if answer == "503" else 1  # an unanswered renewal waits to the end
                while api.refused < tries:
                    assert time.monotonic() < before + 1.4, "renewals stopped"
                    await asyncio.sleep(0.01)
                assert not lease.lost
                lease.check()

                await asyncio.sleep(max(0.0, entered + BELIEVED_SECONDS - time.monotonic()))
                assert lease.lost
                with pytest.raises(LeaseLost):
                    lease.check()
                held = (await http.keys(name))[0]
                assert held.external_id == lease.external_id  # the server still counts it

                api.answer = None
                granted = await http.acquire(name, "other", wait_seconds=5)
                assert (granted.fencing_token or 0) > lease.fencing_token
                assert lease.lost
        (key,) = await http.keys(name)
        assert key.external_id == granted.external_id


def test_a_blocking_http_lease_is_lost_at_its_deadline_while_the_api_hangs(
    valkey: EmbeddedValkey, tmp_path: Path, prefix: str
) -> None:
    """A real `coordinator serve`, stopped (SIGSTOP): the renewal hangs past the deadline."""
    name = "hanging-api"
    # A lease of its own, longer than the others here: the check just before the deadline keeps
    # a second of room, so a thread that wakes late on a loaded machine still wakes before it.
    lease_seconds, believed = 6, 5.4  # less its 0.6 s margin (a tenth)
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL=valkey.url, COORDINATOR_KEY_PREFIX=prefix)
    with (
        serving(env) as served,
        HttpCoordinator(served.base) as http,
        RedisCoordinator(valkey.url, prefix=prefix) as direct,
    ):
        http.register(name, 1, lease_seconds)
        before = time.monotonic()
        with pytest.raises(LeaseLost), http.lease(name, "holder") as lease:
            entered = time.monotonic()
            served.process.send_signal(signal.SIGSTOP)
            try:
                time.sleep(max(0.0, before + believed - 1.0 - time.monotonic()))
                assert not lease.lost  # its renewal has hung since a third of the lease
                lease.check()
                time.sleep(max(0.0, entered + believed - time.monotonic()))
                assert lease.lost
                with pytest.raises(LeaseLost):
                    lease.check()
                assert direct.keys(name)[0].external_id == lease.external_id
            finally:
                served.process.send_signal(signal.SIGCONT)
            # A renewal the client sent before its deadline may still be waiting in the stopped
            # server's socket: resumed, the server applies it and the key is held one lease
            # more by nobody. So the next holder waits up to two lease lengths, not one.
            granted = direct.acquire(name, "other", wait_seconds=2 * lease_seconds + 3)
            assert (granted.fencing_token or 0) > lease.fencing_token
            assert lease.lost


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "1"}, {"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"}],
    ids=["seconds", "http-date"],
)
async def test_the_http_client_raises_store_unavailable_on_503(headers: dict[str, str]) -> None:
    """The API's own 503 problem, and a proxy's HTML 503: both mean "try again later"."""
    api = problem("store_unavailable", "Redis did not answer: LOADING", headers)
    answers = iter(
        [
            httpx.Response(503, headers=dict(api.headers), content=api.body),
            httpx.Response(503, headers=headers, text="<html>Service Unavailable</html>"),
        ]
    )
    transport = httpx.MockTransport(lambda _request: next(answers))
    async with AsyncHttpCoordinator("http://localhost", transport=transport) as http:
        with pytest.raises(StoreUnavailable, match="LOADING"):
            await http.renew("any-lease", retry=False)  # one request: what a 503 maps to
        with pytest.raises(StoreUnavailable, match="503"):
            await http.renew("any-lease", retry=False)  # one request: what a 503 maps to


def test_run_stops_its_command_at_the_deadline_while_writes_are_refused(
    private_valkey: EmbeddedValkey, admin: redis.Redis
) -> None:
    name = "run-refused"
    with RedisCoordinator(private_valkey.url, prefix=PREFIX) as coordinator:
        coordinator.register(name, 1, LEASE_SECONDS)
        argv = [*CLI, "run", name, "--redis-url", private_valkey.url, "--prefix", PREFIX]
        run = subprocess.Popen(
            [*argv, "--", "sleep", "30"],
            env=_clean_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[tuple[float, str]] = []  # stderr, each line with when it arrived

        def read_stderr() -> None:
            assert run.stderr is not None
            lines.extend((time.monotonic(), line) for line in run.stderr)

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        try:
            poll(lambda: coordinator.keys(name)[0].held, time.monotonic() + 15, "never granted")
            granted_by = time.monotonic()
            held = coordinator.keys(name)[0]
            refuse_writes(admin, refuse=True)

            def stopping() -> bool:
                return any("was lost" in line for _, line in lines)

            poll(stopping, granted_by + BELIEVED_SECONDS + 1.0, "the command was not stopped")
            stopped_at = next(at for at, line in lines if "was lost" in line)
            # Stopped at the deadline, while the server still counted the lease.
            assert stopped_at < granted_by + BELIEVED_SECONDS + 0.3
            assert coordinator.keys(name)[0].external_id == held.external_id
            assert run.wait(10) == 128 + 15  # `sleep` ended by SIGTERM
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            reader.join(10)
            assert run.stderr is not None
            run.stderr.close()
        stderr = "".join(line for _, line in lines)
        assert f"coordinator: lease {held.external_id} was lost; stopping sleep" in stderr
        assert "Traceback" not in stderr

        refuse_writes(admin, refuse=False)
        again = coordinator.acquire(name, "other", wait_seconds=5)
        assert (again.fencing_token or 0) > (held.fencing_token or 0)
