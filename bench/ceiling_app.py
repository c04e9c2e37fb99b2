"""The HTTP ceiling: a bare Starlette app on the same server stack as `coordinator serve`.

Two routes mimic a grant/release cycle, each doing exactly one Redis PING on a client made by
the coordinator's own `connect` (same pool class, size and timeouts). It is served by
`uvicorn.run` with the arguments `coordinator serve` passes, and with the same garbage
collector settings (`coordinator.cli.serve.settle_gc`, which alone takes the ceiling from
about 3,100 to 3,550 cycles/s on this project's machine), so the only difference from the
real service is the work each request does.

    COORDINATOR_REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.ceiling_app --port 8001 --workers 1 --log-level warning
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coordinator.cli.serve import settle_gc
from coordinator.config import Settings
from coordinator.connection import RedisClient, connect

API = "/api/v1"
# The wrk script reads `external_id` from the grant's body, as it does from the real one.
GRANT_BODY = b'{"external_id":"0dca8456-f46d-8004-b21a-9c0000000001","key":0}'
RELEASE_BODY = b'{"external_id":"0dca8456-f46d-8004-b21a-9c0000000001","key":0}'


class State(TypedDict):
    """What the lifespan hands every request."""

    redis: RedisClient


async def grant(request: Request) -> Response:
    """POST: one PING."""
    await request.state.redis.ping()
    return Response(GRANT_BODY, 201, media_type="application/json")


async def release(request: Request) -> Response:
    """DELETE: one PING."""
    await request.state.redis.ping()
    return Response(RELEASE_BODY, 200, media_type="application/json")


def create_app() -> Starlette:
    """The ceiling app; reads COORDINATOR_REDIS_URL like the real service."""
    settings = Settings.from_env()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[State]:
        assert settings.redis_url is not None, "set COORDINATOR_REDIS_URL"
        client = connect(settings.redis_url, settings)
        try:
            yield {"redis": client}
        finally:
            await client.aclose()

    return Starlette(
        routes=[
            Route(f"{API}/process/batch_keys", grant, methods=["POST"]),
            Route(f"{API}/process/batch_keys/{{external_id}}", release, methods=["DELETE"]),
        ],
        lifespan=lifespan,
    )


def worker_app() -> Starlette:
    """The app of one worker process, as coordinator.cli.serve.worker_app builds ours."""
    app = create_app()
    settle_gc()
    return app


def main() -> None:
    """Serve with the uvicorn.run arguments `coordinator serve` uses (coordinator/cli.py)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    if args.workers == 1:
        app = create_app()
        settle_gc()
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            proxy_headers=True,
        )
    else:
        uvicorn.run(
            "bench.ceiling_app:worker_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=False,
            proxy_headers=True,
        )


if __name__ == "__main__":
    main()
