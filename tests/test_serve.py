"""`coordinator serve` end to end: a real process, the embedded Valkey, restarts, workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from coordinator.embedded import free_port


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    env["COORDINATOR_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


class Served:
    """A running `coordinator serve`: its URL, process and log file."""

    def __init__(self, base: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.base, self.process, self.log_path = base, process, log

    @property
    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def serving(
    env: dict[str, str],
    *args: str,
    port: int | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Served]:
    """Run `coordinator serve` until the block ends (then SIGTERM), on `port` or a free one
    (`preexec_fn` runs in the child first, e.g. to set its resource limits)."""
    port = port or free_port()
    log = Path(env["COORDINATOR_DATA_DIR"]).parent / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "serve", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - sets limits only, no threads involved
        )
    served = Served(f"http://127.0.0.1:{port}", process, log)
    base = served.base
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, served.log
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
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


def _redis_url(log: str) -> str:
    """The logged Valkey URL with the password from the file the log names (never logged)."""
    found = re.search(r"embedded Valkey on redis://(\S+), password in (\S+),", log)
    assert found, f"no Redis URL logged:\n{log}"
    password = Path(found.group(2)).read_text().strip()
    assert password not in log
    return f"redis://:{password}@{found.group(1)}"


def test_embedded_valkey_keeps_state_across_restarts(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    with serving(env) as served:
        base = served.base
        created = httpx.post(
            f"{base}/api/v1/process", json={"process_name": "nightly", "key_set_size": 4}
        )
        assert created.status_code == 201
        held = httpx.post(
            f"{base}/api/v1/process/batch_keys", json={"process_name": "nightly", "machine": "w1"}
        ).json()
        done = httpx.post(
            f"{base}/api/v1/process/batch_keys", json={"process_name": "nightly", "machine": "w2"}
        ).json()
        released = httpx.delete(f"{base}/api/v1/process/batch_keys/{done['external_id']}")
        assert released.status_code == 200
        before = httpx.get(f"{base}/api/v1/process/batch_keys/nightly").json()
    log = served.log
    assert served.process.returncode == 0
    url = _redis_url(log)
    assert "embedded Valkey stopped" in log
    # Valkey went with the service.
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()

    with serving(env) as served:
        base = served.base
        after = httpx.get(f"{base}/api/v1/process/batch_keys/nightly").json()
        assert after == before
        assert after[0]["external_id"] == held["external_id"]
        assert after[1]["last_completed_at"] == released.json()["last_completed_at"]
        renewed = httpx.patch(f"{base}/api/v1/process/batch_keys/{held['external_id']}")
        assert renewed.status_code == 200
        again = httpx.post(
            f"{base}/api/v1/process/batch_keys", json={"process_name": "nightly", "machine": "w3"}
        ).json()
        assert again["fencing_token"] > done["fencing_token"]


def test_logged_url_serves_direct_workers(tmp_path: Path) -> None:
    with serving(_env(tmp_path / "data")) as served:
        httpx.post(f"{served.base}/api/v1/process", json={"process_name": "direct"})
        direct = redis.Redis.from_url(_redis_url(served.log), decode_responses=True)
        assert direct.zrange("bpc:{registry}:processes", 0, -1) == ["direct"]
        direct.close()


def test_several_workers_share_one_port(tmp_path: Path) -> None:
    with serving(_env(tmp_path / "data"), "--workers", "2") as served:
        base = served.base
        httpx.post(f"{base}/api/v1/process", json={"process_name": "shared", "key_set_size": 20})
        with httpx.Client(base_url=base) as http:
            granted = [
                http.post(
                    "/api/v1/process/batch_keys", json={"process_name": "shared", "machine": "m"}
                ).json()["key"]
                for _ in range(20)
            ]
    assert sorted(granted) == list(range(20))
    assert served.log.count("Started server process") == 2


def test_memory_url_runs_without_a_server(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL="memory://")
    with serving(env) as served:
        created = httpx.post(f"{served.base}/api/v1/process", json={"process_name": "demo"})
        assert created.status_code == 201
        assert httpx.get(f"{served.base}/api/v1/process").json()[0]["process_name"] == "demo"
    assert not (tmp_path / "data").exists()
    assert "embedded Valkey" not in served.log


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COORDINATOR_DEFAULT_LEASE_SECONDS", "soon", "must be an integer"),
        ("COORDINATOR_MAX_KEY_SET_SIZE", "0", "must be from 1"),
        ("COORDINATOR_KEY_PREFIX", "a{b}", "may not contain braces"),
        ("COORDINATOR_REDIS_URL", "http://localhost", "must start with redis://"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "serve", "--port", str(free_port())],
        env=_env(tmp_path / "data", **{variable: value}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("coordinator: ")
    assert message in lines[-1]


def test_memory_url_refuses_several_workers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "serve", "--workers", "2"],
        env=_env(tmp_path / "data", COORDINATOR_REDIS_URL="memory://"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "use --workers 1" in result.stderr


def test_valkey_does_not_outlive_a_killed_service(tmp_path: Path) -> None:
    with serving(_env(tmp_path / "data")) as served:
        url = _redis_url(served.log)
        served.process.kill()
        served.process.wait(10)
    probe = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            probe.ping()
        except redis.exceptions.ConnectionError:
            break
        assert time.monotonic() < deadline, "the embedded Valkey outlived its service"
        time.sleep(0.05)
    probe.close()
