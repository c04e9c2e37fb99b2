"""One JSON line per request, with a request id that is also returned as X-Request-ID."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS = logging.getLogger("coordinator.access")
HEADER = "x-request-id"
# A caller's own id is kept only if it cannot smuggle anything into a log line.
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def configure(level: str = "info") -> None:
    """Send request lines to stderr as they are (already JSON), at `level` or above."""
    ACCESS.setLevel(level.upper())
    ACCESS.propagate = False
    if not ACCESS.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        ACCESS.addHandler(handler)


def note(request: Request, **fields: Any) -> None:  # noqa: ANN401 - any JSON value
    """Add what a handler learned (process_name, key, external_id) to its request's line."""
    log: dict[str, Any] | None = request.scope.get("state", {}).get("log")
    if log is not None:
        log.update({k: v for k, v in fields.items() if v is not None})


class RequestLog:
    """Pure ASGI middleware: a request id in, the header out, one line at the end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if _CALLER_ID.fullmatch(incoming) else os.urandom(16).hex()
        fields: dict[str, Any] = {}
        state = scope.setdefault("state", {})
        state["log"] = fields
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (HEADER.encode(), request_id.encode())]  # fmt: skip
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if ACCESS.isEnabledFor(logging.INFO):
                route = scope.get("route")
                line = {
                    "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "level": "info" if status < 500 else "error",
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": getattr(route, "path", None),
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    **fields,
                }
                ACCESS.info(orjson.dumps(line).decode())
