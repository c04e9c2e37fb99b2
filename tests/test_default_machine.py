"""Workers that name no machine are told apart: each records its host's name and its process
id, so two side by side on one host show as two in every listing (the dashboard's included)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.machine import default_machine
from tests.test_serve import _env, serving


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(_env(tmp_path_factory.mktemp("machines") / "data")) as served:
        yield served.base


def test_the_default_is_the_host_and_the_process() -> None:
    assert default_machine() == f"{socket.gethostname()}:{os.getpid()}"


def test_two_cli_workers_on_one_host_record_two_machines(base: str, tmp_path: Path) -> None:
    """Two `coordinator run` side by side, neither naming its machine: the listing shows two
    machines, each the host's name and that worker's own process id."""
    name = f"side-by-side-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=base, timeout=10) as api:
        created = api.post("/api/v1/process", json={"process_name": name, "key_set_size": 2})
        assert created.status_code == 201, created.text
        env = _env(tmp_path / "data", COORDINATOR_URL=base)
        ready = [tmp_path / f"ready-{n}" for n in range(2)]
        # Each command says it holds its key, then waits until the test has looked.
        go = tmp_path / "go"
        script = 'touch "$2"; while [ ! -e "$1" ]; do sleep 0.05; done'
        command = ["sh", "-c", script, "sh", str(go)]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "coordinator.cli", "run", name, "--", *command, str(flag)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for flag in ready
        ]
        try:
            for worker, flag in zip(workers, ready, strict=True):
                while not flag.exists():
                    assert worker.poll() is None, worker.communicate()
                    _pause(worker)
            held = api.get(f"/api/v1/process/batch_keys/{name}").json()
        finally:
            go.touch()
            for worker in workers:
                worker.communicate(timeout=30)
    machines = sorted(key["machine"] for key in held)
    expected = sorted(f"{socket.gethostname()}:{worker.pid}" for worker in workers)
    assert machines == expected, json.dumps(held)


def _pause(worker: subprocess.Popen[bytes]) -> None:
    """A short wait on the worker (it exits early only on failure): a poll, not a sleep."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.wait(0.05)
