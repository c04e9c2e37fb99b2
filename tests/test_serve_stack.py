"""`coordinator serve` runs on the production stack (uvloop, httptools) and says so; its
worker processes share a listening socket with TCP_NODELAY."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import uvicorn

from coordinator.cli.serve import listening_socket
from coordinator.embedded import free_port
from tests.test_serve import _env, serving


def test_serve_runs_on_uvloop_and_httptools_and_logs_it(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL="memory://")
    with serving(env) as served:
        assert httpx.get(f"{served.base}/healthz").status_code == 200
        log = served.log
    assert "HTTP on uvloop event loop, httptools HTTP parser" in log


def test_the_workers_listening_socket_has_tcp_nodelay() -> None:
    config = uvicorn.Config("coordinator.app:create_app", factory=True, port=free_port())
    sock = listening_socket(config)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        # What uvicorn binds without it: the option this function exists to add.
        plain = uvicorn.Config("coordinator.app:create_app", factory=True, port=free_port())
        bare = plain.bind_socket()
        try:
            assert bare.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        finally:
            bare.close()
    finally:
        sock.close()
