"""`coordinator run` stopped by SIGTERM or SIGINT releases its key `interrupted` (no attempt
counted, the checkpoint kept), and a `run` killed outright takes its command with it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import statuses
from tests import test_cli
from tests.test_cli import API, Cli, Server, stop, wait_until_started
from tests.test_cli_interrupt import _until_waiting

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli, name = test_cli.server, test_cli.cli, test_cli.name

# Writes a checkpoint, says it has started, then becomes `sleep`, which SIGTERM kills.
CHECKPOINTS_THEN_SLEEPS = 'printf "row 7" > "$BATCH_CHECKPOINT_FILE"; : > "$1"; exec sleep 60'


def _register(server: Server, name: str, **options: Any) -> None:
    body = {"process_name": name, "key_set_size": 1, "lease_seconds": 60, **options}
    response = server.api.post(f"{API}/process", json=body)
    assert response.status_code == 201, response.text


def _key(server: Server, name: str) -> dict[str, Any]:
    response = server.api.get(f"{API}/process/{name}/keys/0")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def _event_types(server: Server, name: str) -> list[str]:
    response = server.api.get(f"{API}/process/{name}/events")
    assert response.status_code == 200, response.text
    return [event["type"] for event in response.json()]


@pytest.mark.parametrize("loop", [False, True], ids=["run", "run-loop"])
def test_sigterm_releases_the_key_interrupted_with_its_checkpoint(
    cli: Cli, server: Server, name: str, tmp_path: Path, loop: bool
) -> None:
    # One attempt: a stop counted as a failure would quarantine the key.
    _register(server, name, max_attempts=1)
    ready = tmp_path / "ready"
    looping = ["--loop"] if loop else []
    run = cli.start(
        "run", name, *looping, "--", "sh", "-c", CHECKPOINTS_THEN_SLEEPS, "sh", str(ready)
    )
    try:
        wait_until_started(run, ready)
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=15)
    finally:
        stop(run)
    # 143 either way: the command's own status (its `sleep` killed by the SIGTERM passed on to
    # it), or the loop's 128 + SIGTERM.
    assert run.returncode == statuses.SIGNALLED + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    if loop:
        last = "coordinator: stopped by SIGTERM after 1 key, 0 failed, 1 interrupted"
        assert stderr.splitlines()[-1] == last
    key = _key(server, name)
    assert (key["state"], key["attempts"], key["external_id"]) == ("free", 0, None)
    assert key["checkpoint"] == "row 7"  # written by the command, saved before the release
    assert key["last_completed_at"] is None
    assert _event_types(server, name)[-1] == "released-interrupted"


def test_sigterm_while_waiting_for_a_key_ends_run_with_143(
    cli: Cli, server: Server, name: str
) -> None:
    _register(server, name)
    holder = server.acquire(name)
    waiting = cli.start("run", name, "--wait", "30", "--", "true")
    try:
        _until_waiting(server, name)
        waiting.send_signal(signal.SIGTERM)
        _, stderr = waiting.communicate(timeout=15)
    finally:
        stop(waiting)
    assert waiting.returncode == statuses.SIGNALLED + signal.SIGTERM, stderr
    assert stderr == ""  # stopped on purpose: nothing to report
    # Ends what the API may still wait for, so the server's shutdown need not wait for it.
    response = server.api.delete(f"{API}/process/batch_keys/{holder['external_id']}")
    assert response.status_code == 200, response.text


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_killed_run_takes_its_command_with_it(
    cli: Cli, server: Server, name: str, tmp_path: Path
) -> None:
    _register(server, name)
    pid_file = tmp_path / "pid"
    script = 'echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 60'  # the pid is `sleep`'s
    run = cli.start("run", name, "--", "sh", "-c", script, "sh", str(pid_file))
    pid = None
    try:
        wait_until_started(run, pid_file)
        pid = int(pid_file.read_text())
        assert _parent(pid) == run.pid
        run.kill()  # SIGKILL: `run` can do nothing about it
        run.wait(15)  # not communicate(): a surviving command would hold its pipes open
        killed = time.monotonic()
        deadline = killed + 10  # in practice well under a second
        while _alive(pid):
            assert time.monotonic() < deadline, f"the command (pid {pid}) outlived its run"
            time.sleep(0.01)
        print(f"the command was gone {time.monotonic() - killed:.3f} s after its run died")
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        stop(run)
