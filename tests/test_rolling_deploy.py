"""A rolling deploy under a running batch: no worker dies, no key is stranded, no attempt burned.

Sixteen `coordinator run --loop` workers, eight on each of two `coordinator serve` replicas, drain
a `once` pass whose process allows one attempt per key (so any attempt counted would quarantine
its key and show). While they work, replica A is restarted, then replica B, then Valkey itself:
each replica is stopped with SIGTERM (as an orchestrator does) and started again on the same port,
and Valkey is stopped gracefully and started again on the same port and data a second later.
Every worker rides through its replica's absence and the store's, and exits 0; the pass completes
with every key completed exactly once (from the event history), none failed, expired, interrupted
or quarantined, and none left held.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from coordinator.client.sync import RedisCoordinator
from coordinator.embedded import EmbeddedValkey
from coordinator.errors import StoreUnavailable
from coordinator.models import Event
from tests.test_cli import _clean_env
from tests.test_client_outage import RestartableApi

KEYS = 400
WORKERS = 16
LEASE_SECONDS = 120  # far longer than the test: an expiry would be a stranded key, not a blip
COMMAND = "sleep 0.3"  # each slice's work: long enough that the drain spans every restart
# The serve's own shutdown bound is well below this; a replica that overran it would fail here.
STOP_SECONDS = 25
DRAIN_SECONDS = 150


def _restart(replica: RestartableApi) -> float:
    """Stop the replica as a deploy does, then start it again; how long the stop took (it must
    exit 0 within STOP_SECONDS: its own shutdown bound is well below)."""
    replica.stop()
    assert replica.exit_status == 0, replica.log[-3000:]
    assert replica.stopped_in < STOP_SECONDS
    replica.start()
    return replica.stopped_in


@contextmanager
def replicas(redis_url: str, log_dir: Path) -> Iterator[tuple[RestartableApi, RestartableApi]]:
    env = _clean_env(COORDINATOR_REDIS_URL=redis_url)
    both = (
        RestartableApi(env, log_dir / "serve-a.log"),
        RestartableApi(env, log_dir / "serve-b.log"),
    )
    try:
        for replica in both:
            replica.start()
        yield both
    finally:
        for replica in both:
            replica.kill()


def _worker(base: str, name: str, number: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "coordinator.cli", "run", "--loop", "--url", base, "--machine",
            f"worker-{number}", name, "--wait", "5", "--", "sh", "-c", COMMAND]  # fmt: skip
    # A file, not a pipe: sixteen workers' lines must never fill a pipe nobody reads yet.
    with log.open("wb") as err:
        return subprocess.Popen(argv, env=_clean_env(), stdout=subprocess.DEVNULL, stderr=err)


def _done(coordinator: RedisCoordinator, name: str) -> int:
    """Keys done in the current pass, read directly from Valkey (-1 while it is away)."""
    try:
        current = coordinator.process(name).pass_
    except StoreUnavailable:
        return -1
    assert current is not None
    return current.keys_done


def _wait_for(predicate: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _history(coordinator: RedisCoordinator, name: str) -> list[Event]:
    events: list[Event] = []
    while page := coordinator.events(name, after=events[-1].id if events else "-", limit=1000):
        events += page
    return events


@pytest.mark.slow
@pytest.mark.timeout(DRAIN_SECONDS + 60)
def test_a_rolling_deploy_and_a_valkey_restart_lose_no_worker_key_or_attempt(
    tmp_path: Path,
) -> None:
    name = "nightly"
    valkey = EmbeddedValkey(tmp_path / "valkey").start()
    workers: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"worker-{n}.log" for n in range(WORKERS)]
    try:
        with (
            replicas(valkey.url, tmp_path) as (a, b),
            RedisCoordinator(valkey.url, prefix="bpc") as direct,
        ):
            created = httpx.post(
                f"{a.base}/api/v1/process",
                json={"process_name": name, "key_set_size": KEYS, "lease_seconds": LEASE_SECONDS,
                      "mode": "once", "max_attempts": 1},
            )  # fmt: skip
            assert created.status_code == 201, created.text
            workers = [_worker((a, b)[n % 2].base, name, n, logs[n]) for n in range(WORKERS)]

            # Each restart happens while the pass is well under way, and before it ends.
            stops = []
            _wait_for(lambda: _done(direct, name) >= KEYS // 8, "an eighth of the keys")
            stops.append(_restart(a))
            _wait_for(lambda: _done(direct, name) >= KEYS // 3, "a third of the keys")
            stops.append(_restart(b))
            _wait_for(lambda: _done(direct, name) >= KEYS // 2, "half of the keys")
            before_valkey = _done(direct, name)
            valkey.stop()
            time.sleep(1.0)  # a second's outage of the store, both replicas up
            valkey.start()  # the same port and data
            print(f"replicas stopped in {stops} s; Valkey restarted at {before_valkey} keys done")
            assert before_valkey < KEYS, "the pass ended before Valkey was restarted"

            statuses = [worker.wait(DRAIN_SECONDS) for worker in workers]
            errors = [log.read_text() for log in logs]
            assert statuses == [0] * WORKERS, [e[-1500:] for e in errors if e][:3]
            assert not any("Traceback" in e for e in errors)
            # Every worker did live through outages (its replica's restart, Valkey's), and
            # saw each one end.
            began = [e.count("unreachable, retrying") for e in errors]
            ended = [e.count("answers again") for e in errors]
            assert all(began), began
            assert began == ended, (began, ended)

            process = direct.process(name)
            assert process.pass_ is not None
            assert process.pass_.completed_at is not None
            assert (process.pass_.keys_done, process.pass_.keys_quarantined) == (KEYS, 0)

            events = _history(direct, name)
            by_type = Counter(event.type for event in events)
            completed = Counter(e.key for e in events if e.type == "released-completed")
            assert completed == Counter(range(KEYS))  # every key exactly once
            assert by_type["granted"] == KEYS  # no lost answer took a second key
            for ended in ("released-failed", "released-interrupted", "expired", "revoked",
                          "quarantined"):  # fmt: skip
                assert by_type[ended] == 0, (ended, by_type)
            states = Counter((key.state, key.attempts) for key in direct.iter_keys(name))
            assert states == {("done", 0): KEYS}  # none held, no attempt counted
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        valkey.stop()
