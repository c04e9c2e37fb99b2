"""Ctrl-C anywhere ends a command with exit status 130 and no traceback; an interrupted wait
for a key takes none."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import redis

from tests import test_cli
from tests.test_cli import Cli, Server, stop

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli, name = test_cli.server, test_cli.cli, test_cli.name


def _interrupt(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Send SIGINT, as Ctrl-C does; the output. The command must end promptly with 130."""
    process.send_signal(signal.SIGINT)
    try:
        stdout, stderr = process.communicate(timeout=10)
    finally:
        stop(process)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr == ""
    return stdout, stderr


def _until_waiting(server: Server, name: str) -> None:
    """Until a grant for `name` waits for a release: blocks on the process's `freed` list (in
    the API, or in the direct client), which it does again every half second while it waits."""
    valkey = redis.Redis.from_url(server.redis_url, socket_timeout=10, decode_responses=True)
    try:
        with valkey.monitor() as monitor:
            while True:  # a socket timeout if nothing ever waits
                command = monitor.next_command()["command"]
                if command.startswith("BLPOP") and name in command:
                    return
    finally:
        valkey.close()


@pytest.mark.parametrize("command", [["acquire"], ["run"]])
def test_ctrl_c_while_waiting_for_a_key(
    cli: Cli, server: Server, name: str, command: list[str]
) -> None:
    server.register(name, keys=1)
    holder = server.acquire(name)
    rest = ["--", "true"] if command == ["run"] else []
    waiting = cli.start(*command, name, "--wait", "30", *rest)
    _until_waiting(server, name)
    _interrupt(waiting)
    # Ends what the API may still wait for (test_an_interrupted_wait_takes_no_key), so the
    # server's shutdown need not wait for it.
    cli.ok("release", holder["external_id"])


def test_an_interrupted_wait_takes_no_key(cli: Cli, server: Server, name: str) -> None:
    server.register(name, keys=1)
    holder = server.acquire(name)
    waiting = cli.start("acquire", name, "--wait", "30")
    _until_waiting(server, name)
    _interrupt(waiting)
    cli.ok("release", holder["external_id"])
    time.sleep(0.5)  # time for a forgotten wait, if any, to be granted the key
    (key,) = server.keys(name)
    assert key["external_id"] is None


def test_ctrl_c_while_events_follows(cli: Cli, server: Server, name: str) -> None:
    server.register(name, keys=1)
    following = cli.start("events", name, "--follow")
    assert following.stdout is not None
    assert "registered" in following.stdout.readline()  # it has printed, and now polls
    _interrupt(following)


def test_ctrl_c_while_keys_lists_a_large_process(cli: Cli, server: Server, name: str) -> None:
    server.register(name, keys=500_000)
    listing = cli.start("keys", name)
    assert listing.stdout is not None
    assert listing.stdout.readline().startswith("KEY ")
    assert listing.stdout.readline().startswith("0 ")
    _interrupt(listing)
