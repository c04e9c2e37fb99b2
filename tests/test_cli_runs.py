"""Batch runs on the command line: register's options, `pass start|show|wait`,
`key show|retry`, and `coordinator run`'s checkpoints and drained passes."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests import test_cli
from tests.test_cli import (
    API,
    TRAPPING_CHILD,
    Cli,
    Server,
    assert_error,
    stop,
    table,
    wait_until_started,
)

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli, name = test_cli.server, test_cli.cli, test_cli.name


def _register(server: Server, name: str, keys: int, **options: Any) -> None:
    body = {"process_name": name, "key_set_size": keys, "lease_seconds": 60, **options}
    response = server.api.post(f"{API}/process", json=body)
    assert response.status_code == 201, response.text


def _release(server: Server, name: str, outcome: str = "completed") -> dict[str, Any]:
    """Lease a key and end it with `outcome`; the key as released."""
    granted = server.acquire(name)
    response = server.api.delete(
        f"{API}/process/batch_keys/{granted['external_id']}", params={"outcome": outcome}
    )
    assert response.status_code == 200, response.text
    released: dict[str, Any] = response.json()
    return released


def _key(server: Server, name: str, key: int) -> dict[str, Any]:
    response = server.api.get(f"{API}/process/{name}/keys/{key}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def test_register_takes_the_batch_run_options(cli: Cli, name: str) -> None:
    options = ["--mode", "once", "--max-attempts", "3", "--retry-backoff", "5"]
    process = cli.json("process", "register", name, "--keys", "2", *options)
    assert (process["mode"], process["max_attempts"], process["retry_backoff_seconds"]) == (
        "once",
        3,
        5,
    )
    assert process["pass"]["number"] == 1


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--mode", "sometimes", "invalid choice"),
        ("--max-attempts", "0", "1 to 1000"),
        ("--max-attempts", "1001", "1 to 1000"),
        ("--retry-backoff", "3601", "--retry-backoff"),
        ("--retry-backoff", "-1", "whole seconds"),
    ],
)
def test_register_refuses_bad_batch_run_options(
    cli: Cli, name: str, option: str, value: str, says: str
) -> None:
    assert_error(cli("process", "register", name, option, value), 2, says)


def test_pass_show_start_and_wait(cli: Cli, server: Server, name: str) -> None:
    _register(server, name, 2, mode="once")
    [row] = table(cli.ok("pass", "show", name))
    assert (row["PROCESS"], row["PASS"], row["COMPLETED_AT"], row["KEYS_DONE"]) == (
        name,
        "1",
        "-",
        "0",
    )
    waiting = cli.start("pass", "wait", name, "--timeout", "30", "--json")
    try:
        _release(server, name)
        time.sleep(0.3)
        assert waiting.poll() is None  # one key of two done: still waiting
        _release(server, name)
        out, err = waiting.communicate(timeout=30)
    finally:
        stop(waiting)
    assert waiting.returncode == 0, err
    assert err == ""
    done = orjson.loads(out)
    assert (done["number"], done["keys_done"], done["keys_quarantined"]) == (1, 2, 0)
    assert done["completed_at"] is not None
    started = cli.json("pass", "start", name)
    assert (started["number"], started["completed_at"], started["keys_done"]) == (2, None, 0)
    assert cli.json("pass", "show", name, "--number", "1") == done
    assert cli.json("pass", "show", name)["number"] == 2
    assert_error(cli("pass", "show", name, "--number", "9"), 1, "no pass 9")


def test_pass_wait_gives_up_at_its_timeout_with_status_3(
    cli: Cli, server: Server, name: str
) -> None:
    _register(server, name, 1, mode="once")
    started = time.monotonic()
    result = cli("pass", "wait", name, "--timeout", "1")
    assert time.monotonic() - started < 10
    assert result.returncode == 3, result.stderr
    assert table(result.stdout)[0]["COMPLETED_AT"] == "-"
    assert "is not complete after 1 s" in result.stderr
    # --timeout 0 only asks: how a worker's loop tests whether the pass is complete.
    assert cli("pass", "wait", name, "--timeout", "0").returncode == 3
    _release(server, name)
    assert cli("pass", "wait", name, "--timeout", "0").returncode == 0


def test_pass_wait_exits_1_when_keys_were_quarantined(cli: Cli, server: Server, name: str) -> None:
    _register(server, name, 2, mode="once", max_attempts=1)
    _release(server, name)
    _release(server, name, "failed")  # its one attempt: quarantined, so the pass completes
    result = cli("pass", "wait", name, "--timeout", "30")
    assert result.returncode == 1, result.stderr
    [row] = table(result.stdout)
    assert (row["KEYS_DONE"], row["KEYS_QUARANTINED"]) == ("1", "1")
    assert "1 keys quarantined" in result.stderr


def test_key_show_and_retry(cli: Cli, server: Server, name: str) -> None:
    _register(server, name, 1, max_attempts=1)
    granted = server.acquire(name)
    lease = f"{API}/process/batch_keys/{granted['external_id']}"
    assert server.api.patch(lease, json={"checkpoint": "row 7"}).status_code == 200
    assert server.api.delete(lease, params={"outcome": "failed"}).status_code == 200
    shown = dict(line.split(None, 1) for line in cli.ok("key", "show", name, "0").splitlines())
    assert (shown["STATE"], shown["ATTEMPTS"], shown["CHECKPOINT"]) == (
        "quarantined",
        "1",
        "'row 7'",
    )
    key = cli.json("key", "show", name, "0")
    assert (key["state"], key["attempts"], key["checkpoint"]) == ("quarantined", 1, "row 7")
    retried = cli.json("key", "retry", name, "0")
    assert (retried["state"], retried["attempts"]) == ("free", 0)
    assert_error(cli("key", "show", name, "5"), 1, "no key 5")


def test_run_hands_the_checkpoint_on_to_the_next_holder(
    cli: Cli, server: Server, name: str, tmp_path: Path
) -> None:
    _register(server, name, 1)
    seen = tmp_path / "seen"
    script = (
        'printf "[%s]" "$BATCH_CHECKPOINT" >> "$1";'
        ' printf "row %s" "$2" > "$BATCH_CHECKPOINT_FILE"; exit "$3"'
    )
    assert cli("run", name, "--", "sh", "-c", script, "sh", str(seen), "40", "1").returncode == 1
    assert _key(server, name, 0)["checkpoint"] == "row 40"  # saved at exit, failed
    assert cli("run", name, "--", "sh", "-c", script, "sh", str(seen), "41", "0").returncode == 0
    assert seen.read_text() == "[][row 40]"
    assert _key(server, name, 0)["checkpoint"] is None  # a completed release clears it


def test_run_saves_the_checkpoint_at_each_renewal(
    cli: Cli, server: Server, name: str, tmp_path: Path
) -> None:
    _register(server, name, 1)
    script = 'printf "row 5" > "$BATCH_CHECKPOINT_FILE"; sleep 4'
    running = cli.start("run", name, "--lease-seconds", "3", "--", "sh", "-c", script)
    try:
        deadline = time.monotonic() + 3.5
        while _key(server, name, 0)["checkpoint"] != "row 5":
            assert time.monotonic() < deadline, "no renewal saved the checkpoint"
            time.sleep(0.1)
        assert running.poll() is None  # saved while the command still ran
        _, err = running.communicate(timeout=30)
    finally:
        stop(running)
    assert running.returncode == 0, err


def test_run_exits_0_at_once_when_the_pass_is_complete(cli: Cli, server: Server, name: str) -> None:
    _register(server, name, 1, mode="once")
    _release(server, name)
    started = time.monotonic()
    result = cli("run", name, "--wait", "30", "--", "true")
    assert time.monotonic() - started < 10
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("coordinator: ")
    assert "is complete" in line


def test_run_loop_works_key_after_key_until_the_pass_is_complete(
    cli: Cli, server: Server, name: str, tmp_path: Path
) -> None:
    _register(server, name, 5, mode="once", max_attempts=1)
    ran = tmp_path / "ran"
    script = 'echo "$BATCH_KEY" >> "$1"; [ "$BATCH_KEY" -ne 2 ]'
    result = cli("run", name, "--loop", "--", "sh", "-c", script, "sh", str(ran))
    assert result.returncode == 0, result.stderr
    *said, summary = result.stderr.splitlines()
    holding = [line for line in said if line.startswith("coordinator: holding key")]
    assert len(holding) == 5, result.stderr
    # Besides each key held, the one line of the key that failed.
    failed = f"coordinator: key 2 of {name} failed (exit status 1): attempt 1, quarantined"
    assert [line for line in said if line not in holding] == [failed]
    assert "is complete" in summary
    assert summary.endswith("Ran 5 keys, 1 failed."), summary
    assert sorted(int(key) for key in ran.read_text().split()) == [0, 1, 2, 3, 4]
    assert [_key(server, name, key)["state"] for key in range(5)] == [
        "done", "done", "quarantined", "done", "done"
    ]  # fmt: skip


def test_run_loop_waits_while_the_last_key_is_held(
    cli: Cli, server: Server, name: str, tmp_path: Path
) -> None:
    _register(server, name, 2, mode="once")
    held = server.acquire(name)
    running = cli.start("run", name, "--loop", "--wait", "1", "--", "true")
    try:
        deadline = time.monotonic() + 20
        while _key(server, name, 1 - held["key"])["state"] != "done":
            assert running.poll() is None, running.communicate()
            assert time.monotonic() < deadline, "the loop never ran the free key"
            time.sleep(0.05)
        time.sleep(2.5)  # more than two of the loop's one-second waits go by
        assert running.poll() is None, running.communicate()
        response = server.api.delete(f"{API}/process/batch_keys/{held['external_id']}")
        assert response.status_code == 200, response.text
        _, err = running.communicate(timeout=15)
    finally:
        stop(running)
    assert running.returncode == 0, err
    assert err.splitlines()[-1].endswith("Ran 1 key, 0 failed."), err


def test_ctrl_c_stops_the_loop_after_its_command(
    cli: Cli, server: Server, name: str, tmp_path: Path
) -> None:
    _register(server, name, 3)  # rotate: the loop would go on for ever
    ready, marker = tmp_path / "ready", tmp_path / "trapped"
    running = cli.start(
        "run", name, "--loop", "--", "sh", "-c", TRAPPING_CHILD, "sh", str(ready), str(marker)
    )
    try:
        wait_until_started(running, ready)
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=15)
    finally:
        stop(running)
    assert running.returncode == 130, err
    key = int(marker.read_text())  # the command was told, and said which key it held
    last = "coordinator: stopped by SIGINT after 1 key, 0 failed, 1 interrupted"
    assert err.splitlines()[-1] == last
    released = _key(server, name, key)
    assert released["state"] == "free"
    assert released["attempts"] == 0  # released `interrupted`: no attempt, not left to expire
