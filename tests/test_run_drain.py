"""A fleet of `coordinator run` loops drains a `once` pass whose command fails now and then.

200 keys, not 1,000: each `run` is a fresh Python (about 0.35 s of CPU), and on two busy cores
1,000 keys took well over the 90 s this test may spend. Every key is completed exactly once or
is quarantined, and the history says so as well as the keys.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from coordinator.client.sync import RedisCoordinator
from coordinator.embedded import EmbeddedValkey
from coordinator.models import Event
from tests.test_cli import _clean_env

KEYS = 200
WORKERS = 16
MAX_ATTEMPTS = 3
ALWAYS_FAILS = {key for key in range(KEYS) if key % 97 == 0}  # 0, 97, 194
# Keys whose first attempt fails; the failure leaves a checkpoint, so the next attempt passes.
FAILS_ONCE = {key for key in range(KEYS) if random.Random(key).random() < 0.15} - ALWAYS_FAILS
DRAIN_SECONDS = 240

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


def _drain(url: str, prefix: str, name: str, deadline: float) -> list[str]:
    """Loop `coordinator run` until it says the pass is complete; what each run ended with."""
    argv = [sys.executable, "-m", "coordinator.cli", "run", "--redis-url", url,
            "--prefix", prefix, name, "--wait", "5", "--", "sh", "-c", COMMAND]  # fmt: skip
    outcomes = []
    while time.monotonic() < deadline:
        left = max(1.0, deadline - time.monotonic())
        result = subprocess.run(
            argv, env=_clean_env(), capture_output=True, text=True, timeout=left, check=False
        )
        if result.returncode == 0 and "Nothing to run" in result.stderr:
            outcomes.append("pass complete")
            return outcomes
        if "holding key" in result.stderr and result.returncode in (0, 1):
            outcomes.append(f"ran, exit {result.returncode}")
        elif "are leased" in result.stderr:
            outcomes.append("no free key")  # the rest are held or backing off: run again
        else:
            outcomes.append(f"unexpected: exit {result.returncode}: {result.stderr.strip()}")
    outcomes.append("deadline")
    return outcomes


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
        deadline = time.monotonic() + DRAIN_SECONDS
        with ThreadPoolExecutor(WORKERS) as pool:
            loops = [
                pool.submit(_drain, valkey.url, prefix, name, deadline) for _ in range(WORKERS)
            ]
            outcomes = Counter(outcome for loop in loops for outcome in loop.result())
        print(dict(outcomes))
        assert outcomes["pass complete"] == WORKERS, outcomes
        assert not [o for o in outcomes if o.startswith("unexpected")], outcomes

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
        assert outcomes["ran, exit 0"] == KEYS - len(ALWAYS_FAILS)
        assert outcomes["ran, exit 1"] == sum(failed.values())

        states = Counter((key.state, key.attempts) for key in coordinator.iter_keys(name))
        assert states == {
            ("done", 0): KEYS - len(ALWAYS_FAILS),
            ("quarantined", MAX_ATTEMPTS): len(ALWAYS_FAILS),
        }
