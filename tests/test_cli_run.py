"""`coordinator run`: a command that cannot run takes no key, the key it holds is printed
first, and a lost lease is reported once."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from tests import test_cli
from tests.test_cli import TRAPPING_CHILD, Cli, Server, assert_error, stop, wait_until_started

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli, name = test_cli.server, test_cli.cli, test_cli.name

HOLDING = re.compile(
    r"coordinator: holding key (\d+) of (\S+) \(key_set_size (\d+), fencing token (\d+),"
    r" external id (\S+)\)"
)


@pytest.mark.parametrize(
    ("program", "status", "says"),
    [
        ("/nonexistent/coordinator-test-command", 127, "no such file"),
        ("coordinator-test-no-such-command", 127, "command not found"),
        ("not-executable", 126, "permission denied"),
        ("a-directory", 126, "directory"),
    ],
)
def test_a_command_that_cannot_run_takes_no_key(
    cli: Cli, server: Server, name: str, tmp_path: Path, program: str, status: int, says: str
) -> None:
    server.register(name, keys=1)
    (tmp_path / "not-executable").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "a-directory").mkdir()
    if program in ("not-executable", "a-directory"):
        program = str(tmp_path / program)
    assert_error(cli("run", name, "--", program, "arg"), status, f"cannot run {program}", says)
    assert server.fence(name) is None  # no key was ever granted


def test_run_prints_the_key_it_holds(cli: Cli, server: Server, name: str, tmp_path: Path) -> None:
    server.register(name, keys=3)
    out = tmp_path / "env"
    script = 'echo "$BATCH_KEY $PROCESS_NAME $KEY_SET_SIZE $FENCING_TOKEN $EXTERNAL_ID" > "$1"'
    result = cli("run", name, "--", "sh", "-c", script, "sh", str(out))
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    printed = HOLDING.fullmatch(line)
    assert printed, line
    assert " ".join(printed.groups()) == out.read_text().strip()

    as_json = cli("run", name, "--json", "--", "sh", "-c", script, "sh", str(out))
    assert as_json.returncode == 0, as_json.stderr
    (line,) = as_json.stderr.splitlines()
    held = orjson.loads(line)
    fields = ("key", "process_name", "key_set_size", "fencing_token", "external_id")
    assert " ".join(str(held[f]) for f in fields) == out.read_text().strip()


def test_a_lost_lease_is_reported_once(cli: Cli, server: Server, name: str, tmp_path: Path) -> None:
    server.register(name, keys=1, lease_seconds=3)  # renewed every second
    ready, marker = tmp_path / "ready", tmp_path / "trapped"
    run = cli.start("run", name, "--", "sh", "-c", TRAPPING_CHILD, "sh", str(ready), str(marker))
    try:
        wait_until_started(run, ready)
        cli.ok("process", "delete", name)  # ends every lease of the process
        _, stderr = run.communicate(timeout=15)
    finally:
        stop(run)
    assert run.returncode == 42, stderr
    holding, lost = stderr.splitlines()  # nothing else: no second report, no log line
    printed = HOLDING.fullmatch(holding)
    assert printed, holding
    external_id = printed.group(5)
    assert lost.startswith(f"coordinator: lease {external_id} was lost; stopping sh (")
