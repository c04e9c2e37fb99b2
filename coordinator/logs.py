"""One JSON line per request, with a request id that is also returned as X-Request-ID."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS = logging.getLogger("coordinator.access")
HEADER = "x-request-id"
_HEADER_NAME = HEADER.encode()
# A caller's own id is kept only if it cannot smuggle anything into a log line.
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class LineWriter(logging.Handler):
    """Writes each record's message as one line, the lines of one turn of the event loop in
    one write: under load, a write per turn instead of a write (and flush) per request; alone,
    a line goes out as soon as its request's turn ends. Outside a running loop, at once."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the line; written at the end of this turn of the loop."""
        try:
            self._lines.append(record.getMessage())
            if self._scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)
        except Exception:  # noqa: BLE001 - logging must never break a request
            self.handleError(record)

    def flush(self) -> None:
        """Write every queued line (also called by logging.shutdown at exit)."""
        with self.lock if self.lock is not None else contextlib.nullcontext():
            self._scheduled = False
            lines, self._lines = self._lines, []
            if lines:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()


def configure(level: str = "info") -> None:
    """Send request lines to stderr as they are (already JSON), at `level` or above."""
    ACCESS.setLevel(level.upper())
    ACCESS.propagate = False
    if not ACCESS.handlers:
        ACCESS.addHandler(LineWriter(sys.stderr))


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
        incoming = next((v for k, v in scope["headers"] if k == _HEADER_NAME), b"")
        caller_id = incoming.decode("latin-1")
        request_id = caller_id if _CALLER_ID.fullmatch(caller_id) else os.urandom(16).hex()
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
                                      (_HEADER_NAME, request_id.encode())]  # fmt: skip
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
