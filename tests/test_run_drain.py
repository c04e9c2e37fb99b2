"""A fleet of `coordinator run --loop` workers drains a 1,000-key `once` pass whose command fails
now and then.

Each of the 16 workers is one `coordinator run --loop` process that runs a shell command under
key after key until the pass is complete. Every key is completed exactly once or is quarantined,
and the history says so as well as the keys and the workers' own accounts.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from coordinator.client.sync import RedisCoordinator
from coordinator.embedded import EmbeddedValkey
from coordinator.models import Event
from tests.test_cli import _clean_env

KEYS = 1000
WORKERS = 16
MAX_ATTEMPTS = 3
ALWAYS_FAILS = {key for key in range(KEYS) if key % 97 == 0}  # 0, 97, … 970
# Keys whose first attempt fails; the failure leaves a checkpoint, so the next attempt passes.
FAILS_ONCE = {key for key in range(KEYS) if random.Random(key).random() < 0.15} - ALWAYS_FAILS
DRAIN_SECONDS = 240
SUMMARY = re.compile(r"Ran (\d+) keys?, (\d+) failed\.")
FAILED = re.compile(
    r"coordinator: key \d+ of drain failed \(exit status 1\): attempt \d+, "
    r"(quarantined|free again)$"
)

# A shell, not Python: one fork per key instead of a second interpreter's start.
COMMAND = f"""
[ $((BATCH_KEY % 97)) -eq 0 ] && exit 1
case " {" ".join(map(str, sorted(FAILS_ONCE)))} " in
  *" $BATCH_KEY "*)
    [ -n "$BATCH_CHECKPOINT" ] && exit 0
    echo failed > "$BATCH_CHECKPOINT_FILE"
    exit 1;;
esac
exit 0
"""


def _drain(url: str, prefix: str, name: str) -> tuple[int, int, int]:
    """One `coordinator run --loop` until the pass is complete: (keys it says it held, keys
    it ran, of which failed)."""
    argv = [sys.executable, "-m", "coordinator.cli", "run", "--loop", "--redis-url", url,
            "--prefix", prefix, name, "--wait", "5", "--", "sh", "-c", COMMAND]  # fmt: skip
    result = subprocess.run(
        argv, env=_clean_env(), capture_output=True, text=True, timeout=DRAIN_SECONDS, check=False
    )
    summary = SUMMARY.search(result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    assert summary, result.stderr[-2000:]
    # Each key whose command failed is said once, with what became of it.
    failures = [line for line in result.stderr.splitlines() if FAILED.match(line)]
    unexpected = [
        line
        for line in result.stderr.splitlines()
        if not line.startswith("coordinator: holding key")
        and not SUMMARY.search(line)
        and line not in failures
    ]
    assert not unexpected, unexpected[:10]
    assert len(failures) == int(summary[2]), failures[:10]
    held = result.stderr.count("coordinator: holding key")
    return held, int(summary[1]), int(summary[2])


def _history(coordinator: RedisCoordinator, name: str) -> list[Event]:
    """Every event of the process, read page by page."""
    events: list[Event] = []
    while page := coordinator.events(name, after=events[-1].id if events else "-", limit=500):
        events += page
    return events


@pytest.mark.timeout(DRAIN_SECONDS + 60)
def test_sixteen_run_loops_drain_a_once_pass(valkey: EmbeddedValkey, prefix: str) -> None:
    name = "drain"
    with RedisCoordinator(valkey.url, prefix=prefix) as coordinator:
        coordinator.register(name, KEYS, 30, mode="once", max_attempts=MAX_ATTEMPTS)
        with ThreadPoolExecutor(WORKERS) as pool:
            loops = [pool.submit(_drain, valkey.url, prefix, name) for _ in range(WORKERS)]
            accounts = [loop.result() for loop in loops]
        print(accounts)
        held, ran, failed_runs = (sum(column) for column in zip(*accounts, strict=True))
        assert held == ran

        process = coordinator.process(name)
        assert process.pass_ is not None
        assert process.pass_.completed_at is not None
        assert (process.pass_.keys_done, process.pass_.keys_quarantined) == (
            KEYS - len(ALWAYS_FAILS),
            len(ALWAYS_FAILS),
        )

        events = _history(coordinator, name)
        by_type = Counter(event.type for event in events)
        completed = Counter(e.key for e in events if e.type == "released-completed")
        failed = Counter(e.key for e in events if e.type == "released-failed")
        quarantined = {e.key for e in events if e.type == "quarantined"}
        assert completed == Counter(set(range(KEYS)) - ALWAYS_FAILS)  # each exactly once
        assert failed == Counter(
            dict.fromkeys(ALWAYS_FAILS, MAX_ATTEMPTS) | dict.fromkeys(FAILS_ONCE, 1)
        )
        assert quarantined == ALWAYS_FAILS
        assert by_type["granted"] == sum(completed.values()) + sum(failed.values())
        assert by_type["expired"] == by_type["revoked"] == 0
        assert by_type["pass-completed"] == 1
        assert ran == by_type["granted"]
        assert failed_runs == sum(failed.values())

        states = Counter((key.state, key.attempts) for key in coordinator.iter_keys(name))
        assert states == {
            ("done", 0): KEYS - len(ALWAYS_FAILS),
            ("quarantined", MAX_ATTEMPTS): len(ALWAYS_FAILS),
        }
