"""Progress on the command line, against a real `coordinator serve`: `pass show` prints the
current pass's counts, rate, ETA and quarantined keys; `run --loop` says each key that failed
and what became of it, and that it waits out a backoff."""

from __future__ import annotations

import queue
import re
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest

from coordinator.progress import ETA_MIN_KEYS_DONE
from tests import test_cli
from tests.test_cli import API, Cli, Server, stop, table

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli, name = test_cli.server, test_cli.cli, test_cli.name


def _register(server: Server, name: str, keys: int, **options: Any) -> None:
    body = {"process_name": name, "key_set_size": keys, "lease_seconds": 60, **options}
    response = server.api.post(f"{API}/process", json=body)
    assert response.status_code == 201, response.text


def _release(server: Server, name: str, outcome: str = "completed", machine: str = "w") -> int:
    granted = server.acquire(name, machine)
    response = server.api.delete(
        f"{API}/process/batch_keys/{granted['external_id']}", params={"outcome": outcome}
    )
    assert response.status_code == 200, response.text
    key: int = granted["key"]
    return key


def _sections(text: str) -> list[str]:
    return text.strip("\n").split("\n\n")


def test_pass_show_prints_counts_rate_eta_and_quarantined_keys(
    cli: Cli, server: Server, name: str
) -> None:
    _register(server, name, ETA_MIN_KEYS_DONE + 4, mode="once", max_attempts=1)
    for _ in range(ETA_MIN_KEYS_DONE - 1):
        _release(server, name)
    before = datetime.now(UTC).replace(microsecond=0)
    bad = _release(server, name, "failed", machine="bad-host")
    counts, quarantined = _sections(cli.ok("pass", "show", name))
    [row] = table(counts)
    assert (row["PROCESS"], row["PASS"], row["KEYS_DONE"], row["KEYS_QUARANTINED"]) == (
        name, "1", str(ETA_MIN_KEYS_DONE - 1), "1",
    )  # fmt: skip
    assert (row["IN_BACKOFF"], row["HELD"], row["LEFT"]) == ("0", "0", "4")
    assert (row["RATE_PER_MIN"], row["ETA"], row["COMPLETED_AT"]) == ("unknown", "unknown", "-")
    heading, *listing = quarantined.splitlines()
    assert heading == "quarantined keys (1 of 1):"
    [listed] = table("\n".join(listing))
    at = listed.pop("QUARANTINED_AT")
    assert listed == {"KEY": str(bad), "ATTEMPTS": "1", "MACHINE": "bad-host"}
    # When the failed release quarantined it, in ISO 8601 UTC to the second (the server's
    # clock and the test's are one machine's).
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", at), at
    assert before <= datetime.fromisoformat(at) <= datetime.now(UTC)
    _release(server, name)
    counts = _sections(cli.ok("pass", "show", name))[0]
    [row] = table(counts)
    assert float(row["RATE_PER_MIN"]) > 0
    eta = datetime.fromisoformat(row["ETA"])
    assert eta.tzinfo is not None
    started = datetime.fromisoformat(row["STARTED_AT"])
    assert eta >= started
    shown = cli.json("pass", "show", name)
    assert (shown["pass"], shown["number"], shown["keys_done"], shown["keys_left"]) == (
        1, 1, ETA_MIN_KEYS_DONE, 3,
    )  # fmt: skip
    assert shown["eta_seconds"] > 0
    assert [(q["key"], q["machine"]) for q in shown["quarantined"]] == [(bad, "bad-host")]


def test_run_loop_says_each_failed_key_and_its_quarantine(
    cli: Cli, server: Server, name: str
) -> None:
    _register(server, name, 3, mode="once", max_attempts=1)
    result = cli("run", name, "--loop", "--", "sh", "-c", '[ "$BATCH_KEY" -ne 1 ] || exit 3')
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if " failed (exit status" in line]
    assert said == [f"coordinator: key 1 of {name} failed (exit status 3): attempt 1, quarantined"]


def _lines(stream: IO[str] | None) -> queue.Queue[str]:
    """The lines of `stream` as they come, read on a thread."""
    lines: queue.Queue[str] = queue.Queue()

    assert stream is not None

    def read() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_run_loop_says_a_backoff_and_that_it_waits_it_out(
    cli: Cli, server: Server, name: str
) -> None:
    _register(server, name, 2, mode="once", max_attempts=3, retry_backoff_seconds=3600)
    script = '[ "$BATCH_KEY" -ne 0 ] || exit 4'
    running = cli.start("run", name, "--loop", "--wait", "1", "--", "sh", "-c", script)
    try:
        lines, said = _lines(running.stderr), []
        while not said or "waiting" not in said[-1]:
            try:
                line = lines.get(timeout=30)
            except queue.Empty:
                pytest.fail(f"run --loop said no wait; it said {said}")
            if not line.startswith("coordinator: holding key"):
                said.append(line)
        running.send_signal(signal.SIGTERM)
        running.wait(15)
    finally:
        stop(running)
    retry_at = server.api.get(f"{API}/process/{name}/keys/0").json()["retry_at"]
    until = datetime.fromisoformat(retry_at).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert said == [
        f"coordinator: key 0 of {name} failed (exit status 4): attempt 1, in backoff until {until}",
        f"coordinator: no key of {name} is free: 1 key is in backoff, the first until {until}"
        " (0 held); waiting",
    ]


def test_run_loop_says_a_failed_key_is_free_again(
    cli: Cli, server: Server, name: str, tmp_path: Path
) -> None:
    _register(server, name, 2, mode="once")  # no budget: a failed key is granted again
    failed_once = tmp_path / "failed-once"
    script = '[ "$BATCH_KEY" -ne 1 ] || [ -e "$1" ] || { : > "$1"; exit 5; }'
    result = cli("run", name, "--loop", "--", "sh", "-c", script, "sh", str(failed_once))
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if " failed (exit status" in line]
    assert said == [f"coordinator: key 1 of {name} failed (exit status 5): attempt 1, free again"]
