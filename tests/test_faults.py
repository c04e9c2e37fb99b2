"""Faults: a frozen worker, a killed API replica, a killed Valkey, a flushed script cache."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from coordinator.embedded import EmbeddedValkey, free_port
from tests.soak import run, two_replicas
from tests.test_serve import _env, serving

pytestmark = pytest.mark.anyio

API = "/api/v1/process"


def _grant(base: str, name: str, machine: str, **extra: object) -> httpx.Response:
    body = {"process_name": name, "machine": machine, **extra}
    return httpx.post(f"{base}{API}/batch_keys", json=body, timeout=10)


def test_a_frozen_worker_loses_its_key_and_learns_it_on_waking(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL=valkey.url)
    with serving(env) as served:
        base = served.base
        httpx.post(f"{base}{API}", json={"process_name": "frozen", "key_set_size": 1})
        marker = tmp_path / "token"
        worker = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "run", "frozen", "--url", base,
             "--lease-seconds", "1", "--", "sh", "-c", f'echo $FENCING_TOKEN > {marker}; sleep 30'],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 15
            while not marker.exists() or not marker.read_text().strip():
                assert time.monotonic() < deadline, "the worker never started its job"
                time.sleep(0.05)
            frozen_token = int(marker.read_text())
            os.kill(worker.pid, signal.SIGSTOP)  # no renewals from here on
            taken = _grant(base, "frozen", "other", wait_seconds=10)
            assert taken.status_code == 201
            assert taken.json()["fencing_token"] > frozen_token
            os.kill(worker.pid, signal.SIGCONT)
            # Waking, its renewal answers 410: it stops its job and fails.
            assert worker.wait(15) != 0
            assert worker.stderr is not None
            assert "was lost" in worker.stderr.read()
            holder = httpx.get(f"{base}{API}/batch_keys/frozen").json()[0]
            assert holder["external_id"] == taken.json()["external_id"]
        finally:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGCONT)
                worker.kill()
                worker.wait()
            if worker.stderr:
                worker.stderr.close()


async def test_a_killed_replica_loses_nothing_the_other_keeps_serving(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    with two_replicas(valkey.url, tmp_path) as bases:
        env = _env(tmp_path / "victim" / "data", COORDINATOR_REDIS_URL=valkey.url)
        (tmp_path / "victim").mkdir()
        with serving(env) as victim:

            async def kill_soon() -> None:
                await asyncio.sleep(3)
                victim.process.kill()

            killer = asyncio.create_task(kill_soon())
            # Workers on the victim see connection errors after the kill; the checker
            # still holds every lease the survivors and the victim acknowledged.
            report = await run([*bases[:1], victim.base], seconds=6, seed=11, tolerate=True)
            await killer
    assert victim.process.returncode == -signal.SIGKILL
    assert report.leases > 50
    assert report.overlaps == []
    assert report.token_regressions == []
    assert report.server_errors == 0
    assert report.transport_errors > 0  # the kill was felt
    assert report.held_at_end == []


def test_valkey_killed_and_restarted_loses_nothing_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "valkey"
    server = EmbeddedValkey(data, port=port, appendfsync="always").start()
    env = _env(tmp_path / "api" / "data", COORDINATOR_REDIS_URL=server.url)
    (tmp_path / "api").mkdir()
    try:
        with serving(env) as served:
            base = served.base
            assert (
                httpx.post(
                    f"{base}{API}", json={"process_name": "durable", "key_set_size": 3}
                ).status_code
                == 201
            )
            granted = _grant(base, "durable", "m").json()
            server.kill()
            down = httpx.post(
                f"{base}{API}/batch_keys",
                json={"process_name": "durable", "machine": "x"},
                timeout=10,
            )
            assert down.status_code == 503
            assert down.json()["code"] == "store_unavailable"
            assert int(down.headers["Retry-After"]) >= 1
            assert httpx.get(f"{base}/readyz", timeout=10).status_code == 503
            server = EmbeddedValkey(data, port=port, appendfsync="always").start()
            deadline = time.monotonic() + 15
            while httpx.get(f"{base}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "the service did not recover"
                time.sleep(0.05)
            keys = httpx.get(f"{base}{API}/batch_keys/durable").json()
            assert keys[0]["external_id"] == granted["external_id"]
            assert keys[0]["fencing_token"] == granted["fencing_token"]
            again = _grant(base, "durable", "m2").json()
            assert again["fencing_token"] > granted["fencing_token"]
    finally:
        server.stop()


async def test_a_script_flush_under_load_fails_no_request(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    flusher = redis.Redis.from_url(valkey.url)

    async def flush_repeatedly() -> int:
        count = 0
        for _ in range(20):
            await asyncio.sleep(0.2)
            await asyncio.to_thread(flusher.script_flush)
            count += 1
        return count

    with two_replicas(valkey.url, tmp_path) as bases:
        flushes = asyncio.create_task(flush_repeatedly())
        report = await run(bases, seconds=5, seed=5)
        assert await flushes == 20
    flusher.close()
    assert report.leases > 50
    assert report.server_errors == 0
    assert set(report.statuses) <= {200, 201, 409, 410}
    assert report.overlaps == []
