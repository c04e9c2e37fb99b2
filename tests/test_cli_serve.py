"""`coordinator serve`'s settings as a user reaches for them: flags, COORDINATOR_HOST and
COORDINATOR_PORT, `make run PORT=...`, and every bad one refused on one line before anything
starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from coordinator.embedded import free_port

CLI = [sys.executable, "-m", "coordinator.cli"]
ROOT = Path(__file__).resolve().parents[1]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    env["COORDINATOR_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def _wait_ready(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready at {base}:\n{log.read_text()}"
        time.sleep(0.05)


@contextmanager
def serving(argv: list[str], env: dict[str, str], base: str, log: Path) -> Iterator[None]:
    """Run `argv` (in a session of its own) until ready at `base`; SIGTERM its group after."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(process, base, log)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def _refused(argv: list[str], env: dict[str, str]) -> str:
    """Run a command that must fail as a bad setting: exit 2, one line; that line."""
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=30, check=False, cwd=ROOT
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("coordinator: ")
    return lines[0]


def test_host_and_port_come_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path / "data", COORDINATOR_HOST="127.0.0.2", COORDINATOR_PORT=str(port))
    with (
        serving([*CLI, "serve"], env, f"http://127.0.0.2:{port}", tmp_path / "log"),
        # Only on the address it was given: nothing answers on 127.0.0.1.
        pytest.raises(httpx.ConnectError),
    ):
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path / "data", COORDINATOR_HOST="127.0.0.2", COORDINATOR_PORT="not-a-port")
    argv = [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with serving(argv, env, f"http://127.0.0.1:{port}", tmp_path / "log"):
        pass


def test_make_run_takes_port_and_host(tmp_path: Path) -> None:
    # -o: never rebuild the shared virtualenv from here, whatever its timestamps say.
    make = ["make", "--no-print-directory", "-o", ".venv/.installed", "run"]
    dry = subprocess.run(
        [*make, "-n"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    assert dry.stdout.split() == [".venv/bin/coordinator", "serve"]
    dry = subprocess.run(
        [*make, "-n", "PORT=8750", "HOST=0.0.0.0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert "--port 8750" in dry.stdout
    assert "--host 0.0.0.0" in dry.stdout

    port = free_port()
    env = _env(tmp_path / "data")
    with serving([*make, f"PORT={port}"], env, f"http://127.0.0.1:{port}", tmp_path / "log"):
        pass


@pytest.mark.parametrize(
    ("args", "variables", "fragments"),
    [
        (["--port", "99999"], {}, ["--port", "1 to 65535", "'99999'"]),
        (["--port", "http"], {}, ["--port", "1 to 65535"]),
        (["--workers", "0"], {}, ["--workers", "at least 1"]),
        (["--log-level", "loud"], {}, ["--log-level", "loud"]),
        ([], {"COORDINATOR_PORT": "99999"}, ["COORDINATOR_PORT", "1 to 65535"]),
        ([], {"COORDINATOR_PORT": "eighty"}, ["COORDINATOR_PORT", "'eighty'"]),
        (
            ["--insecure-open"],
            {"COORDINATOR_HOST": "no-such-host.invalid"},
            ["cannot listen", "no-such-host"],
        ),
        (["--host", "192.0.2.1", "--insecure-open"], {}, ["cannot listen", "192.0.2.1"]),
        ([], {"COORDINATOR_LOG_LEVEL": "loud"}, ["COORDINATOR_LOG_LEVEL"]),
        ([], {"COORDINATOR_REDIS_URL": "memory://", "COORDINATOR_PORT": "0"}, ["PORT"]),
    ],
    ids=[
        "port-too-big",
        "port-not-a-number",
        "no-workers",
        "log-level",
        "env-port-too-big",
        "env-port-not-a-number",
        "env-host-unknown",
        "host-not-here",
        "env-log-level",
        "env-port-zero",
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], variables: dict[str, str], fragments: list[str]
) -> None:
    # A free port where none is given, so a setting that is ignored shows as a server starting.
    given = "--port" in args or "COORDINATOR_PORT" in variables
    port = [] if given else ["--port", str(free_port())]
    line = _refused([*CLI, "serve", *args, *port], _env(tmp_path / "data", **variables))
    for fragment in fragments:
        assert fragment in line


@pytest.mark.parametrize("via", ["--port", "COORDINATOR_PORT"])
@pytest.mark.parametrize("redis", ["embedded", "memory"])
def test_a_port_in_use_is_refused_before_anything_starts(
    tmp_path: Path, via: str, redis: str
) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        variables = {"COORDINATOR_REDIS_URL": "memory://"} if redis == "memory" else {}
        args = ["--port", str(port)] if via == "--port" else []
        if via == "COORDINATOR_PORT":
            variables["COORDINATOR_PORT"] = str(port)
        started = time.monotonic()
        line = _refused([*CLI, "serve", *args], _env(data, **variables))
    assert time.monotonic() - started < 10
    assert f"port {port} ({via}) on 127.0.0.1 is in use" in line
    assert "--port or COORDINATOR_PORT" in line  # how to choose another
    # No Valkey was started for it: none wrote its log, none published its URL.
    assert not (data / "valkey.log").exists()
    assert not (data / "server.json").exists()


def test_memory_url_without_fakeredis_is_one_line(tmp_path: Path) -> None:
    # A fakeredis that cannot be imported, as where the `memory` extra is not installed.
    blocked = tmp_path / "blocked" / "fakeredis"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = _env(
        tmp_path / "data",
        COORDINATOR_REDIS_URL="memory://",
        PYTHONPATH=str(blocked.parent),
    )
    line = _refused([*CLI, "serve", "--port", str(free_port())], env)
    assert "memory:// needs fakeredis" in line
