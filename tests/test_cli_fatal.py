"""A run knows when to stop, on the command line: `run --fatal-exit-code N` releases a
command's exit status N `fatal`, `process register --max-failed-keys N` sets the run policy,
and `pass wait` exits with a status of its own when the pass failed. Each over HTTP and
directly on Redis."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.cli import statuses
from tests import test_cli
from tests.test_cli import API, Cli, Server, assert_error, table

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli, name = test_cli.server, test_cli.cli, test_cli.name


def _register(server: Server, name: str, keys: int, **options: Any) -> None:
    body = {"process_name": name, "key_set_size": keys, "lease_seconds": 60, **options}
    response = server.api.post(f"{API}/process", json=body)
    assert response.status_code == 201, response.text


def _key(server: Server, name: str, key: int) -> dict[str, Any]:
    response = server.api.get(f"{API}/process/{name}/keys/{key}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def test_run_releases_a_fatal_exit_status_fatal(cli: Cli, server: Server, name: str) -> None:
    _register(server, name, 3, max_attempts=5)
    fatal = ["--fatal-exit-code", "3", "--fatal-exit-code", "5"]
    first = cli("run", name, *fatal, "--", "sh", "-c", "exit 5")
    assert first.returncode == 5, first.stderr  # the command's own status, as ever
    assert (_key(server, name, 0)["state"], _key(server, name, 0)["attempts"]) == (
        "quarantined",
        1,
    )
    other = cli("run", name, *fatal, "--", "sh", "-c", "exit 4")
    assert other.returncode == 4, other.stderr
    assert (_key(server, name, 1)["state"], _key(server, name, 1)["attempts"]) == ("free", 1)


def test_run_loop_stops_when_its_fatal_keys_fail_the_pass(
    cli: Cli, server: Server, name: str
) -> None:
    _register(server, name, 4, mode="once", max_failed_keys=0)
    script = '[ "$BATCH_KEY" -ne 1 ] || exit 9'
    result = cli("run", name, "--loop", "--fatal-exit-code", "9", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert "failed" in result.stderr.splitlines()[-1]
    assert _key(server, name, 1)["state"] == "quarantined"
    # Keys 2 and 3 were never run: the pass stopped at its first fatal key.
    assert [_key(server, name, key)["state"] for key in (2, 3)] == ["free", "free"]
    assert_error(cli("run", name, "--", "true"), statuses.OK, "failed")


def test_register_takes_max_failed_keys_and_pass_wait_exits_with_its_status(
    cli: Cli, server: Server, name: str
) -> None:
    options = ["--keys", "2", "--mode", "once", "--max-failed-keys", "0"]
    process = cli.json("process", "register", name, *options)
    assert process["max_failed_keys"] == 0
    granted = server.acquire(name)
    response = server.api.delete(
        f"{API}/process/batch_keys/{granted['external_id']}", params={"outcome": "fatal"}
    )
    assert response.status_code == 200, response.text
    result = cli("pass", "wait", name, "--timeout", "30")
    assert result.returncode == statuses.PASS_FAILED == 4, result.stderr
    [row] = table(result.stdout)
    assert row["KEYS_QUARANTINED"] == "1"
    assert "failed" in result.stderr
    assert cli.json("pass", "show", name, "--number", "1")["failed"] is True


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["process", "register", "x", "--max-failed-keys", "-1"], 2, "at least 0"),
        (["process", "register", "x", "--max-failed-keys", "1"], 1, "only to mode 'once'"),
        (["run", "x", "--fatal-exit-code", "0", "--", "true"], 2, "1 to 255"),
        (["run", "x", "--fatal-exit-code", "256", "--", "true"], 2, "1 to 255"),
    ],
)
def test_bad_values_are_refused(cli: Cli, args: list[str], status: int, says: str) -> None:
    assert_error(cli(*args), status, says)
