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
# How long a request line may wait to be written with others.
FLUSH_SECONDS = 0.05
# A caller's own id is kept only if it cannot smuggle anything into a log line.
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class LineWriter(logging.Handler):
    """Writes each record's message as one line, the lines of FLUSH_SECONDS in one write: a
    write (and flush) per request cost the service measurably under load. Outside a running
    event loop, at once; at exit, logging.shutdown flushes what is queued (a killed process
    loses at most the last FLUSH_SECONDS of lines)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record's line; written at the end of this turn of the loop."""
        try:
            self.write(record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never break a request
            self.handleError(record)

    def write(self, line: str) -> None:
        """Queue one line; written at the end of this turn of the loop."""
        self._lines.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(FLUSH_SECONDS, self.flush)

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


def _emit(line: str) -> None:
    """Log one request line. In the default set-up (configure's one LineWriter, no filters)
    the line goes to the writer as is, without a LogRecord (caller lookup, thread and process
    names) built per request. Any other set-up (a handler added, as tests do) gets records
    through `logging` as usual."""
    handlers = ACCESS.handlers
    if len(handlers) == 1 and not ACCESS.filters:
        writer = handlers[0]
        if type(writer) is LineWriter and writer.level <= logging.INFO and not writer.filters:
            writer.write(line)
            return
    ACCESS.info(line)


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
                _emit(orjson.dumps(line).decode())
