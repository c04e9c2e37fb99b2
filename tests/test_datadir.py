"""One data folder, one server, one Valkey URL: `coordinator serve` run as a user runs it."""

from __future__ import annotations

import json
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
import redis

from coordinator.client import RedisCoordinator
from coordinator.config import ConfigError, Settings
from coordinator.embedded import EmbeddedError, EmbeddedValkey, free_port
from tests.test_serve import _env

COORDINATOR = str(Path(sys.executable).with_name("coordinator"))


class Served:
    """A running `coordinator serve`: its API URL and its process."""

    def __init__(self, api_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.api_url, self.process, self.log_path = api_url, process, log

    @property
    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def serving(env: dict[str, str]) -> Iterator[Served]:
    """`coordinator serve` on a free port until the block ends (then SIGTERM, if still up)."""
    port = free_port()
    log = Path(env["COORDINATOR_DATA_DIR"]).parent / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [COORDINATOR, "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, served.log
            try:
                if httpx.get(f"{served.api_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "coordinator serve did not become ready"
            time.sleep(0.05)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def _server_json(data_dir: Path) -> dict[str, object]:
    fields: dict[str, object] = json.loads((data_dir / "server.json").read_text())
    return fields


def _without_password(redis_url: str) -> str:
    """`redis://:secret@host:port/0` as the server logs it: `redis://host:port/0`."""
    scheme, _, rest = redis_url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A `coordinator` command; a server-side wait past 15 s fails the test."""
    return subprocess.run(
        [COORDINATOR, *args], env=env, capture_output=True, text=True, timeout=15, check=False
    )


def _wait_gone(redis_url: str) -> None:
    """Until nothing answers at `redis_url` (a Valkey told to stop takes a moment)."""
    probe = redis.Redis.from_url(redis_url, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                probe.ping()
            except redis.exceptions.ConnectionError:
                return
            assert time.monotonic() < deadline, "the embedded Valkey outlived its service"
            time.sleep(0.05)
    finally:
        probe.close()


def test_second_server_on_one_folder_is_refused_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(_env(data)) as first:
        running = _server_json(data)
        log_before = (data / "valkey.log").read_text()
        port = free_port()
        started = time.monotonic()
        second = subprocess.Popen(
            [COORDINATOR, "serve", "--port", str(port)],
            env=_env(data),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, stderr = second.communicate(timeout=10)
        finally:
            second.kill()
            second.wait()
        assert second.returncode == 2
        assert time.monotonic() - started < 5
        [line] = stderr.strip().splitlines()
        assert line.startswith("coordinator: ")
        assert str(data.resolve()) in line
        assert f"pid {first.process.pid}" in line
        assert first.api_url in line
        # The Valkey's address without its password, which stays in the 0600 files.
        assert _without_password(str(running["redis_url"])) in line
        assert (data / "valkey.password").read_text().strip() not in line
        # It started no Valkey: nothing new in the folder's Valkey log.
        assert (data / "valkey.log").read_text() == log_before
        assert _server_json(data) == running
        # The first server keeps working, and its Valkey does not hold the lock.
        created = httpx.post(f"{first.api_url}/api/v1/process", json={"process_name": "only"})
        assert created.status_code == 201
        assert httpx.get(f"{first.api_url}/readyz").status_code == 200
        direct = redis.Redis.from_url(str(running["redis_url"]))
        valkey_pid = direct.info("server")["process_id"]
        direct.close()
        if sys.platform == "linux":
            fds = Path(f"/proc/{valkey_pid}/fd")
            held = {str(fd.readlink()) for fd in fds.iterdir()}
            assert str((data / "coordinator.lock").resolve()) not in held


def test_a_killed_server_does_not_block_the_next(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(_env(data)) as first:
        redis_url = str(_server_json(data)["redis_url"])
        first.process.kill()
        first.process.wait(10)
    _wait_gone(redis_url)  # PR_SET_PDEATHSIG: its Valkey got SIGTERM when it died
    with serving(_env(data)) as second:
        running = _server_json(data)
        assert running["pid"] == second.process.pid
        assert running["redis_url"] == redis_url


def test_restart_keeps_the_redis_url_for_direct_workers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(_env(data)) as first:
        redis_url = str(_server_json(data)["redis_url"])  # what a worker is configured with
        assert f"embedded Valkey on {_without_password(redis_url)}, password in" in first.log
        with RedisCoordinator(redis_url) as worker:
            worker.register("kept", 3)
    assert first.process.returncode == 0
    assert not (data / "server.json").exists()  # a clean stop withdraws it
    _wait_gone(redis_url)
    with serving(_env(data)):
        assert _server_json(data)["redis_url"] == redis_url
        with RedisCoordinator(redis_url) as worker:
            assert [p.process_name for p in worker.processes()] == ["kept"]
            assert worker.acquire("kept", "w1").key == 0


def test_configured_valkey_port_wins(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    with serving(_env(data, COORDINATOR_VALKEY_PORT=str(port))):
        password = (data / "valkey.password").read_text().strip()
        assert _server_json(data)["redis_url"] == f"redis://:{password}@127.0.0.1:{port}/0"
        assert (data / "valkey.port").read_text().strip() == str(port)


def test_kept_port_taken_by_another_program_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        (data / "valkey.port").write_text(f"{port}\n")
        result = _cli(_env(data), "serve", "--port", str(free_port()))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("coordinator: ")
    assert f"port {port}" in line
    assert "taken by another program" in line
    assert "COORDINATOR_VALKEY_PORT" in line
    assert str(data / "valkey.port") in line


def test_client_commands_find_the_running_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(_env(data)) as served:
        assert not served.api_url.endswith(":8000")
        registered = _cli(_env(data), "process", "register", "found", "--keys", "2")
        assert registered.returncode == 0, registered.stderr
        listed = _cli(_env(data), "process", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [p["process_name"] for p in json.loads(listed.stdout)] == ["found"]
        # The request reached the server through the API, not around it.
        assert '"route":"/api/v1/process"' in served.log


def test_direct_runs_on_the_running_servers_redis(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The server's key prefix travels in server.json, so --direct sees what the API sees.
    with serving(_env(data, COORDINATOR_KEY_PREFIX="team1")) as served:
        created = httpx.post(f"{served.api_url}/api/v1/process", json={"process_name": "api"})
        assert created.status_code == 201
        registered = _cli(_env(data), "process", "register", "direct", "--direct")
        assert registered.returncode == 0, registered.stderr
        listed = _cli(_env(data), "process", "list", "--direct", "--json")
        assert listed.returncode == 0, listed.stderr
        assert sorted(p["process_name"] for p in json.loads(listed.stdout)) == ["api", "direct"]
        seen = httpx.get(f"{served.api_url}/api/v1/process").json()
        assert sorted(p["process_name"] for p in seen) == ["api", "direct"]
    refused = _cli(_env(data), "process", "list", "--direct")
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("coordinator: --direct: no `coordinator serve` is running")


def test_valkey_port_setting_is_validated() -> None:
    assert Settings.from_env({"COORDINATOR_VALKEY_PORT": "6390"}).valkey_port == 6390
    assert Settings.from_env({}).valkey_port is None
    for bad in ("0", "65536", "sixty"):
        with pytest.raises(ConfigError, match="COORDINATOR_VALKEY_PORT"):
            Settings.from_env({"COORDINATOR_VALKEY_PORT": bad})


def test_valkey_start_failure_says_why(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(EmbeddedError, match="Address already in use"):
            EmbeddedValkey(tmp_path, port, start_timeout=5).start()
