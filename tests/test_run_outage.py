"""`coordinator run --loop` and `pass wait` ride out an outage of the service, and past the
outage budget they give up with exit status 75 and one line saying so (after the one that said the
outage began), never a traceback.

The outage is real: `coordinator serve` is stopped (SIGTERM, as a deploy stops it) and
started again on the same port three seconds later, or there is no server at all.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from coordinator.cli import statuses
from coordinator.client.sync import RedisCoordinator
from coordinator.embedded import EmbeddedValkey, free_port
from tests.test_cli import CLI, _clean_env, stop
from tests.test_run_drain import _history
from tests.test_serve import serving

KEYS = 48
WORKERS = 4
OUTAGE_SECONDS = 3
# Long enough that every worker meets the outage mid-work, short enough for a quick pass.
COMMAND = ["sh", "-c", "sleep 0.2"]


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _keys_done(coordinator: RedisCoordinator, name: str) -> int:
    current = coordinator.process(name).pass_
    assert current is not None
    return current.keys_done


@pytest.mark.timeout(120)
def test_run_loops_and_pass_wait_ride_out_an_api_restart(
    valkey: EmbeddedValkey, prefix: str, tmp_path: Path
) -> None:
    name, port = "deploy", free_port()
    env = _clean_env(
        COORDINATOR_DATA_DIR=str(tmp_path / "data"),
        COORDINATOR_REDIS_URL=valkey.url,
        COORDINATOR_KEY_PREFIX=prefix,
    )
    url = f"http://127.0.0.1:{port}"
    running: list[subprocess.Popen[str]] = []
    coordinator = RedisCoordinator(valkey.url, prefix=prefix)
    with coordinator:
        coordinator.register(name, KEYS, 30, mode="once", max_attempts=1)
        try:
            with serving(env, "--log-level", "warning", port=port):
                loop = ["run", name, "--loop", "--wait", "2", "--url", url, "--", *COMMAND]
                running = [_start(*loop) for _ in range(WORKERS)]
                # No --timeout: it waits for ever (it crashed on math.ceil(inf) before).
                waiting = _start("pass", "wait", name, "--url", url, "--json")
                running.append(waiting)
                deadline = time.monotonic() + 30
                while _keys_done(coordinator, name) < WORKERS:
                    assert all(p.poll() is None for p in running), [
                        p.communicate() for p in running
                    ]
                    assert time.monotonic() < deadline, "the workers never got going"
                    time.sleep(0.05)
            down_at, done_then = time.monotonic(), _keys_done(coordinator, name)
            assert done_then < KEYS, "the pass ended before the restart: make the command slower"
            time.sleep(OUTAGE_SECONDS)  # the outage itself: nothing answers on the port
            with serving(env, "--log-level", "warning", port=port):
                outage = time.monotonic() - down_at
                ended = [p.communicate(timeout=90) for p in running]
        finally:
            for process in running:
                stop(process)

        for process, (_, err) in zip(running, ended, strict=True):
            assert process.returncode == statuses.OK, err
            assert "Traceback" not in err
        assert all("is complete" in err.splitlines()[-1] for _, err in ended[:WORKERS])
        assert '"completed_at":' in ended[-1][0]  # pass wait printed the completed pass
        current = coordinator.process(name).pass_
        assert current is not None
        assert current.completed_at is not None
        assert (current.keys_done, current.keys_quarantined) == (KEYS, 0)

        events = _history(coordinator, name)
        completed = Counter(e.key for e in events if e.type == "released-completed")
        by_type = Counter(e.type for e in events)
        assert completed == Counter(range(KEYS))  # every key completed exactly once
        assert by_type["released-failed"] == by_type["expired"] == 0  # no attempt was spent
        assert Counter((k.state, k.attempts) for k in coordinator.iter_keys(name)) == {
            ("done", 0): KEYS
        }
    print(f"outage {outage:.1f} s with {done_then} of {KEYS} keys done; {by_type}")


@pytest.mark.parametrize(
    ("transport", "command"),
    [
        ("http", ["run", "x", "--", "true"]),
        ("redis", ["run", "x", "--loop", "--", "true"]),
        ("http", ["pass", "wait", "x"]),
        ("redis", ["pass", "wait", "x", "--timeout", "30"]),
    ],
    ids=["run-http", "run-loop-redis", "pass-wait-http", "pass-wait-timeout-redis"],
)
def test_past_the_outage_budget_it_says_so_and_exits_75(transport: str, command: list[str]) -> None:
    nobody = free_port()  # nothing listens there
    where = (
        ["--url", f"http://127.0.0.1:{nobody}"]
        if transport == "http"
        else ["--redis-url", f"redis://127.0.0.1:{nobody}"]
    )
    at = command.index("--") if "--" in command else len(command)
    argv = [*CLI, *command[:at], *where, "--outage-budget", "1", *command[at:]]
    started = time.monotonic()
    result = subprocess.run(
        argv, env=_clean_env(), capture_output=True, text=True, timeout=60, check=False
    )
    took = time.monotonic() - started
    # Two lines, no traceback: the outage as it began, and the giving up.
    assert result.returncode == statuses.UNAVAILABLE, result.stderr
    assert result.stdout == ""
    began, gave_up = result.stderr.splitlines()
    assert began.startswith("coordinator: ")
    assert "unreachable, retrying for up to 1 s" in began
    assert gave_up.startswith("coordinator: ")
    assert "stayed unreachable" in gave_up
    assert "outage budget" in gave_up
    assert 1 <= took < 30, took  # it retried for the budget, then gave up


def test_the_outage_budget_comes_from_the_environment_too() -> None:
    nobody = free_port()
    argv = [*CLI, "pass", "wait", "x", "--url", f"http://127.0.0.1:{nobody}"]
    env = _clean_env(COORDINATOR_OUTAGE_BUDGET_SECONDS="0.5")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == statuses.UNAVAILABLE, result.stderr
    assert "0.5 s" in result.stderr
    bad = _clean_env(COORDINATOR_OUTAGE_BUDGET_SECONDS="soon")
    result = subprocess.run(argv, env=bad, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == statuses.USAGE, result.stderr
    assert "COORDINATOR_OUTAGE_BUDGET_SECONDS" in result.stderr
