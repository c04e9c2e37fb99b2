"""The `coordinator` command line end to end: real `coordinator serve`, real CLI processes.

One server (with its embedded Valkey) serves the whole module. Every client command runs as
`python -m coordinator.cli ...`, over HTTP (`--url`) and directly on Redis (`--redis-url`),
and its effect is checked through the HTTP API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from coordinator.embedded import free_port
from coordinator.keys import KeySpace
from coordinator.models import from_rfc3339

CLI = [sys.executable, "-m", "coordinator.cli"]
API = "/api/v1"
KEY_FIELDS = {
    "external_id",
    "key",
    "last_completed_at",
    "machine",
    "process_name",
    "started_at",
    "expires_at",
    "fencing_token",
    # Batch runs (README "Batch runs"): in every key object.
    "attempts",
    "state",
    "retry_at",
}
PROCESS_HEADER = ["PROCESS", "KEYS", "LEASE_SECONDS"]
KEYS_HEADER = ["KEY", "STATE", "MACHINE", "TOKEN", "EXPIRES_AT", "LAST_COMPLETED_AT", "EXTERNAL_ID"]
TOKEN_EPOCH_US = 1_767_225_600_000_000  # grant.lua: tokens count microseconds from 2026-01-01
# A shell child that says it has started, then sleeps until signalled; its trap records its
# key in $2 and exits 42. (`wait` returns as soon as a trapped signal arrives.) The sleeper
# makes $1 itself, after its exec: a forked sh that has not yet reset the trap it inherited
# swallows the trap's kill, and its sleep then holds `run`'s stderr open for 30 s. The trap
# kills $!, set at the fork: a `pid=$!` may not have run yet when the signal comes.
TRAPPING_CHILD = (
    'trap \'kill "$!" 2>/dev/null; echo "$BATCH_KEY" > "$2"; exit 42\' TERM INT;'
    ' sh -c \': > "$1"; exec sleep 30\' sh "$1" & wait "$!"'
)


def wait_until_started(run: subprocess.Popen[str], ready: Path, timeout: float = 15) -> None:
    """Wait until the command under `run` has made the file `ready` (TRAPPING_CHILD makes it
    once its trap is set); fail if `run` ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.02)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    env.update(extra)
    return env


@dataclass
class Server:
    base: str
    redis_url: str
    api: httpx.Client

    def keys(self, name: str) -> list[dict[str, Any]]:
        response = self.api.get(f"{API}/process/batch_keys/{name}")
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()
        return result

    def register(self, name: str, keys: int, lease_seconds: int = 60) -> None:
        body = {"process_name": name, "key_set_size": keys, "lease_seconds": lease_seconds}
        response = self.api.post(f"{API}/process", json=body)
        assert response.status_code == 201, response.text

    def acquire(self, name: str, machine: str = "holder") -> dict[str, Any]:
        response = self.api.post(
            f"{API}/process/batch_keys", json={"process_name": name, "machine": machine}
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def fence(self, name: str) -> int | None:
        """The last fencing token issued for `name` (the `fence` key), or None if none was."""
        with redis.Redis.from_url(self.redis_url, decode_responses=True) as client:
            value = client.get(KeySpace().process(name).fence)
        return None if value is None else int(str(value))


def next_token(previous: int, granted: dict[str, Any]) -> int:
    """The token grant.lua issues after `previous`, at the Redis TIME `granted` started."""
    started_us = from_rfc3339(granted["started_at"])
    assert started_us is not None
    return max(previous + 1, started_us - TOKEN_EPOCH_US)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `coordinator serve` with its embedded Valkey for the module, on a free port."""
    data = tmp_path_factory.mktemp("cli-serve")
    port = free_port()
    log = data / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "serve", "--port", str(port), "--log-level", "warning"],
            env=_clean_env(COORDINATOR_DATA_DIR=str(data / "data")),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "coordinator serve did not become ready"
            time.sleep(0.05)
        # The log leaves the password out: server.json has the URL direct workers use.
        redis_url = json.loads((data / "data" / "server.json").read_text())["redis_url"]
        with httpx.Client(base_url=base, timeout=10) as api:
            yield Server(base, redis_url, api)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


class Cli:
    """`coordinator ...` with one transport's options added to every client command."""

    def __init__(self, transport: str, options: list[str]) -> None:
        self.transport = transport
        self.options = options

    def argv(self, *args: str) -> list[str]:
        at = args.index("--") if "--" in args else len(args)
        return [*CLI, *args[:at], *self.options, *args[at:]]

    def __call__(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def json(self, *args: str) -> Any:
        printed = self.ok(*args, "--json")
        if args[0] == "keys":  # a stream: JSON Lines, one key per line
            return [orjson.loads(line) for line in printed.splitlines()]
        return orjson.loads(printed)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env=_clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As from a terminal: a suite started in the background (`make test &`) has
            # SIGINT ignored, which its children would inherit, so Ctrl-C tests could not work.
            preexec_fn=_default_sigint,  # noqa: PLW1509 - only resets a signal disposition
        )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _http_cli(server: Server) -> Cli:
    return Cli("http", ["--url", server.base])


def _redis_cli(server: Server) -> Cli:
    return Cli("redis", ["--redis-url", server.redis_url])


@pytest.fixture(params=["http", "redis"])
def cli(request: pytest.FixtureRequest, server: Server) -> Cli:
    """The CLI over HTTP or directly on the server's Redis (parametrised)."""
    return _http_cli(server) if request.param == "http" else _redis_cli(server)


@pytest.fixture
def name() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"


def table(text: str) -> list[dict[str, str]]:
    """A printed table as rows keyed by its header; asserts the header comes first."""
    lines = text.strip("\n").splitlines()
    header = lines[0].split()
    rows = [line.split() for line in lines[1:]]
    assert all(len(row) == len(header) for row in rows), text
    return [dict(zip(header, row, strict=True)) for row in rows]


def header(text: str) -> list[str]:
    return text.splitlines()[0].split()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def assert_error(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    """Exit `status`, nothing on stdout, exactly one `coordinator: ...` line on stderr."""
    assert result.returncode == status, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("coordinator: ")
    for fragment in fragments:
        assert fragment in lines[0]


def stop(process: subprocess.Popen[str]) -> None:
    """Kill a leftover CLI process after a failed assertion (and reap it)."""
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


# ---- process list | register | delete ----


def test_process_commands(cli: Cli, server: Server, name: str) -> None:
    other = f"{name}-b"
    registered = cli.ok("process", "register", name, "--keys", "3", "--lease-seconds", "120")
    assert header(registered) == PROCESS_HEADER
    assert table(registered) == [{"PROCESS": name, "KEYS": "3", "LEASE_SECONDS": "120"}]

    as_json = cli.json("process", "register", other)
    # The defaults: 10 keys, the service's default lease.
    assert {k: v for k, v in as_json.items() if k != "pass"} == {
        "process_name": other,
        "key_set_size": 10,
        "key_space_size": 10,
        "lease_seconds": 3600,
        "mode": "rotate",
        "max_attempts": None,
        "retry_backoff_seconds": 0,
        "max_failed_keys": None,
    }
    assert as_json["pass"]["number"] == 1

    api_list = server.api.get(f"{API}/process").json()
    assert as_json in api_list
    assert cli.json("process", "list") == api_list

    listed = cli.ok("process", "list")
    assert header(listed) == PROCESS_HEADER
    assert {"PROCESS": name, "KEYS": "3", "LEASE_SECONDS": "120"} in table(listed)
    assert {"PROCESS": other, "KEYS": "10", "LEASE_SECONDS": "3600"} in table(listed)

    deleted = cli.ok("process", "delete", name)
    assert header(deleted) == PROCESS_HEADER
    assert table(deleted) == [{"PROCESS": name, "KEYS": "3", "LEASE_SECONDS": "120"}]
    assert cli.json("process", "delete", other) == as_json
    names = {p["process_name"] for p in server.api.get(f"{API}/process").json()}
    assert not {name, other} & names


# ---- keys | acquire | renew | release ----


def test_key_commands(cli: Cli, server: Server, name: str) -> None:
    server.register(name, keys=2, lease_seconds=60)

    listed = cli.ok("keys", name)
    assert header(listed) == KEYS_HEADER
    assert [(r["KEY"], r["STATE"], r["LAST_COMPLETED_AT"]) for r in table(listed)] == [
        ("0", "free", "never"),
        ("1", "free", "never"),
    ]

    acquired = cli.ok("acquire", name, "--machine", "m-0")
    assert header(acquired) == KEYS_HEADER
    (row,) = table(acquired)
    first = server.keys(name)[0]
    assert row == {
        "KEY": "0",
        "STATE": "held",
        "MACHINE": "m-0",
        "TOKEN": str(first["fencing_token"]),
        "EXPIRES_AT": first["expires_at"],
        "LAST_COMPLETED_AT": "never",
        "EXTERNAL_ID": first["external_id"],
    }

    second = cli.json("acquire", name, "--machine", "m-1")
    # A grant carries the key's checkpoint (none yet); listings leave it out.
    assert second.pop("checkpoint") is None
    assert set(second) == KEY_FIELDS
    assert second == server.keys(name)[1]
    assert (second["key"], second["machine"], second["process_name"]) == (1, "m-1", name)
    assert first["fencing_token"] == next_token(0, first)
    assert second["fencing_token"] == next_token(first["fencing_token"], second)
    assert second["fencing_token"] == server.fence(name)
    assert cli.json("keys", name) == server.keys(name)

    renewed = cli.json("renew", second["external_id"], "--lease-seconds", "300")
    assert set(renewed) == KEY_FIELDS
    assert renewed == server.keys(name)[1]
    assert renewed["external_id"] == second["external_id"]
    assert at(renewed["expires_at"]) > at(second["expires_at"])
    assert (at(renewed["expires_at"]) - at(second["started_at"])).total_seconds() >= 300

    renewed_table = cli.ok("renew", first["external_id"])
    assert header(renewed_table) == KEYS_HEADER
    (row,) = table(renewed_table)
    assert (row["KEY"], row["STATE"], row["EXTERNAL_ID"]) == ("0", "held", first["external_id"])
    assert at(row["EXPIRES_AT"]) > at(first["expires_at"])

    released = cli.json("release", second["external_id"])
    assert set(released) == KEY_FIELDS
    assert released["external_id"] == second["external_id"]
    assert released["expires_at"] is None
    assert released["last_completed_at"] is not None
    after = server.keys(name)[1]
    assert after["external_id"] is None
    assert after["last_completed_at"] == released["last_completed_at"]

    failed = cli.ok("release", first["external_id"], "--outcome", "failed")
    assert header(failed) == KEYS_HEADER
    (row,) = table(failed)
    assert (row["KEY"], row["LAST_COMPLETED_AT"]) == ("0", "never")
    assert server.keys(name)[0]["external_id"] is None
    assert server.keys(name)[0]["last_completed_at"] is None


def test_url_from_the_environment(server: Server, name: str) -> None:
    server.register(name, keys=1)
    result = subprocess.run(
        [*CLI, "keys", name, "--json"],
        env=_clean_env(COORDINATOR_URL=server.base),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [orjson.loads(line) for line in result.stdout.splitlines()] == server.keys(name)


# ---- errors ----


def test_service_errors_are_one_line_and_exit_1(cli: Cli, server: Server, name: str) -> None:
    missing = f"{name}-missing"
    unknown = f"No process named '{missing}' is registered."
    assert_error(cli("keys", missing), 1, unknown)
    assert_error(cli("acquire", missing, "--json"), 1, unknown)
    assert_error(cli("process", "delete", missing), 1, unknown)

    server.register(name, keys=1)
    assert_error(cli("process", "register", name), 1, name, "already registered")
    held = cli.json("acquire", name)
    assert_error(cli("acquire", name), 1, f"All keys of process '{name}' are leased")
    started = time.monotonic()
    assert_error(cli("acquire", name, "--wait", "0.5"), 1, "are leased")
    assert time.monotonic() - started >= 0.5

    cli.ok("release", held["external_id"])
    gone = f"Lease '{held['external_id']}' has ended"
    assert_error(cli("release", held["external_id"]), 1, gone)
    assert_error(cli("renew", held["external_id"]), 1, gone)


@pytest.mark.parametrize("rest", [[], ["--"]], ids=["no-separator", "empty-command"])
def test_run_without_a_command_is_exit_2(
    cli: Cli, server: Server, name: str, rest: list[str]
) -> None:
    server.register(name, keys=1)
    assert_error(cli("run", name, *rest), 2, "run needs a command")
    # Nothing was acquired: no token was ever issued, so the first grant's is the clock's.
    assert server.fence(name) is None
    first = server.acquire(name)
    assert first["fencing_token"] == next_token(0, first) == server.fence(name)


# ---- run ----


def test_run_gives_the_command_its_key(cli: Cli, server: Server, name: str, tmp_path: Path) -> None:
    server.register(name, keys=3)
    holder = server.acquire(name)  # key 0 is taken, so the command gets key 1
    out = tmp_path / "env"
    script = (
        'printf "%s\\n" "$BATCH_KEY" "$KEY_SET_SIZE" "$FENCING_TOKEN" "$EXTERNAL_ID"'
        ' "$PROCESS_NAME" > "$1"'
    )
    result = cli("run", name, "--machine", "runner", "--", "sh", "-c", script, "sh", str(out))
    assert result.returncode == 0, result.stderr

    batch_key, size, token, external_id, process_name = out.read_text().splitlines()
    assert (batch_key, size, process_name) == ("1", "3", name)
    # The next token after the holder's, and the last one issued.
    assert holder["fencing_token"] < int(token) == server.fence(name)

    keys = cli.json("keys", name)
    assert keys[0]["external_id"] == holder["external_id"]  # untouched
    assert keys[1]["external_id"] is None  # released ...
    assert keys[1]["last_completed_at"] is not None  # ... as completed
    assert keys[2]["last_completed_at"] is None
    # EXTERNAL_ID is the lease that was granted and has ended (410, not 404 unknown).
    assert_error(cli("release", external_id), 1, f"Lease '{external_id}' has ended")


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["sh", "-c", "exit 3"], 3),
        (["sh", "-c", "kill -9 $$"], 128 + signal.SIGKILL),
    ],
    ids=["exit-3", "sigkill"],  # a missing command takes no key: tests/test_cli_run.py
)
def test_run_propagates_failure_and_releases_failed(
    cli: Cli, server: Server, name: str, command: list[str], status: int
) -> None:
    server.register(name, keys=2)
    result = cli("run", name, "--", *command)
    assert result.returncode == status, result.stderr
    keys = server.keys(name)
    assert [k["external_id"] for k in keys] == [None, None]
    assert [k["last_completed_at"] for k in keys] == [None, None]
    # Key 0 was granted (a token was issued) and released failed: it keeps its place, first
    # in line, and the next grant's token follows the run's.
    ran = server.fence(name)
    assert ran is not None
    again = server.acquire(name)
    assert again["key"] == 0
    assert again["fencing_token"] == next_token(ran, again) == server.fence(name)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_forwards_a_signal_to_the_command(
    cli: Cli, server: Server, name: str, tmp_path: Path, signum: signal.Signals
) -> None:
    server.register(name, keys=1)
    ready, marker = tmp_path / "ready", tmp_path / "trapped"
    run = cli.start("run", name, "--", "sh", "-c", TRAPPING_CHILD, "sh", str(ready), str(marker))
    try:
        wait_until_started(run, ready)
        assert server.keys(name)[0]["external_id"] is not None
        # Only `coordinator run` is signalled: the command is in a session of its own.
        run.send_signal(signum)
        _, stderr = run.communicate(timeout=15)
    finally:
        stop(run)
    assert run.returncode == 42, stderr
    assert marker.read_text() == "0\n"
    (key,) = server.keys(name)
    assert key["external_id"] is None
    assert key["last_completed_at"] is None


def test_run_stops_the_command_when_its_lease_is_lost(
    cli: Cli, server: Server, name: str, tmp_path: Path
) -> None:
    server.register(name, keys=1, lease_seconds=3)  # renewed every second
    ready, marker = tmp_path / "ready", tmp_path / "trapped"
    run = cli.start("run", name, "--", "sh", "-c", TRAPPING_CHILD, "sh", str(ready), str(marker))
    try:
        wait_until_started(run, ready)
        cli.ok("process", "delete", name)  # ends every lease of the process
        _, stderr = run.communicate(timeout=15)
    finally:
        stop(run)
    # Stopped by SIGTERM, which its trap turned into exit 42: non-zero, and not a success.
    assert run.returncode == 42, stderr
    assert marker.read_text() == "0\n"
    assert "was lost" in stderr


def test_run_renews_a_short_lease_through_a_long_command(server: Server) -> None:
    """Both transports at once: a 2 s lease held through `sleep 6`, renewed every 2/3 s."""
    suffix = uuid.uuid4().hex[:12]
    http_name, redis_name = f"cli-renew-http-{suffix}", f"cli-renew-redis-{suffix}"
    server.register(http_name, keys=1, lease_seconds=2)
    server.register(redis_name, keys=1, lease_seconds=3600)
    runs = {
        http_name: _http_cli(server).start(
            "run", http_name, "--machine", "long-http", "--", "sleep", "6"
        ),
        redis_name: _redis_cli(server).start(
            "run", redis_name, "--machine", "long-redis", "--lease-seconds", "2", "--", "sleep", "6"
        ),
    }
    try:
        granted: dict[str, dict[str, Any]] = {}
        seen_at: dict[str, float] = {}  # when each run's lease was first seen: its own clock
        deadline = time.monotonic() + 15
        while len(granted) < 2:
            for name in runs:
                key = server.keys(name)[0]
                if key["external_id"] is not None and name not in granted:
                    granted[name] = key
                    seen_at[name] = time.monotonic()
            assert time.monotonic() < deadline, "the runs never acquired their keys"
            time.sleep(0.02)
        for name, key in granted.items():
            lease = at(key["expires_at"]) - at(key["started_at"])
            assert lease.total_seconds() == 2, name

        previous = granted
        for check_at in (3, 5):
            now: dict[str, dict[str, Any]] = {}
            # Each run is checked 3 s and 5 s into its own job, so one that started earlier
            # cannot have finished its `sleep 6` before its check.
            for name, run in sorted(runs.items(), key=lambda item: seen_at[item[0]]):
                time.sleep(max(0, seen_at[name] + check_at - time.monotonic()))
                assert run.poll() is None, run.communicate()
                key = server.keys(name)[0]
                # Held past the 2 s it was granted for, by the same lease, extended again.
                assert key["external_id"] == granted[name]["external_id"], (name, check_at)
                assert key["fencing_token"] == granted[name]["fencing_token"]
                assert key["machine"] == granted[name]["machine"]
                assert at(key["expires_at"]) > at(previous[name]["expires_at"]), (name, check_at)
                now[name] = key
            previous = now

        for name, run in runs.items():
            _, stderr = run.communicate(timeout=15)
            assert run.returncode == 0, (name, stderr)
            (key,) = server.keys(name)
            assert key["external_id"] is None
            assert key["last_completed_at"] is not None  # released `completed`: never lost
    finally:
        for run in runs.values():
            stop(run)


def test_run_waits_for_a_free_key(cli: Cli, server: Server, name: str, tmp_path: Path) -> None:
    server.register(name, keys=1)
    holder = server.acquire(name)
    out = tmp_path / "out"
    valkey = redis.Redis.from_url(server.redis_url)
    script = 'echo "$BATCH_KEY $FENCING_TOKEN" > "$1"'
    run = cli.start("run", name, "--wait", "5", "--", "sh", "-c", script, "sh", str(out))
    try:
        # Blocked: waiting in BLPOP for a release (in the API, or in the direct client).
        deadline = time.monotonic() + 10
        while not any(c.get("cmd") == "blpop" for c in valkey.client_list()):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the run never waited"
            time.sleep(0.02)
        assert run.poll() is None
        assert not out.exists()

        cli.ok("release", holder["external_id"])
        released_at = time.monotonic()
        _, stderr = run.communicate(timeout=15)
        # Woken by the release, well before its 5 s wait would have run out.
        assert time.monotonic() - released_at < 2.5
    finally:
        stop(run)
        valkey.close()
    assert run.returncode == 0, stderr
    batch_key, token = out.read_text().split()
    assert batch_key == "0"
    # The next token after the holder's, and the last one issued.
    assert holder["fencing_token"] < int(token) == server.fence(name)
    (key,) = server.keys(name)
    assert key["external_id"] is None
    assert key["last_completed_at"] is not None
