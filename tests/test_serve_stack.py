"""`coordinator serve` runs on the production stack (uvloop, httptools) and says so."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.test_serve import _env, serving


def test_serve_runs_on_uvloop_and_httptools_and_logs_it(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL="memory://")
    with serving(env) as served:
        assert httpx.get(f"{served.base}/healthz").status_code == 200
        log = served.log
    assert "HTTP on uvloop event loop, httptools HTTP parser" in log
