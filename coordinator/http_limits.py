"""What one unauthenticated connection may cost the HTTP server, enforced below the app.

httptools, unlike h11, has no bound of its own on a request head, and uvicorn accumulates one
header's pieces by concatenation (quadratic: a 64 MiB header took 5 s of CPU while every other
client waited); uvicorn also holds a connection that never finishes its head for ever, and its
`limit_concurrency` counts idle connections and answers only once a head arrives. This
protocol, uvicorn's httptools one with three bounds, answers before the app is reached:

- a request head (request line and headers) over MAX_HEAD_BYTES: 431, parsing no further;
- no complete head HEAD_TIMEOUT_SECONDS after the connection opened or its last answer: closed
  (408 when part of a head came);
- a connection beyond `max_connections` open in this process: 503 as soon as it opens (the
  bound itself kept below the open-files limit, which `serve` raises to its hard limit).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from asyncio import TimerHandle
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from coordinator.problems import MEDIA_TYPE, PROBLEMS

logger = logging.getLogger("coordinator")

# Browsers and proxies send heads of a few KiB; nginx's default buffers stop at 32 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Long enough for a slow client on a poor link, short enough that slowloris holds nothing.
HEAD_TIMEOUT_SECONDS = 10.0
# After a refusal what the client still sends is read and dropped, for this long or this many
# bytes, so that closing with unread data (the kernel then sends a reset, which may destroy the
# answer before the client reads it) comes only to a client that keeps on sending.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
# Refused connections beyond the bound that may linger at once (each holds an open file); the
# next ones get their 503 and are closed at once, so a flood cannot take the last open files.
LINGERING_MAX = 32
# Open files a process needs besides its HTTP and Redis connections: logs, the listening
# socket, the embedded Valkey's pipes, the metrics files of `--workers N`.
FILES_RESERVE = 64


class LimitedConfig(uvicorn.Config):
    """uvicorn's Config carrying the connection bound to each protocol (and, pickled, to the
    worker processes of `--workers N`)."""

    def __init__(
        self,
        app: str | Callable[[], Any],
        *,
        max_connections: int,
        **kwargs: Any,  # noqa: ANN401 - uvicorn.Config's own keywords, passed on
    ) -> None:
        super().__init__(app, http=BoundedHttpToolsProtocol, **kwargs)
        self.max_connections = max_connections


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head size, head time and connection count."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_connections = getattr(config, "max_connections", 1_000_000)
        self.in_head = True  # bytes received now belong to a request head
        self.head_bytes = 0
        self.head_timer: TimerHandle | None = None
        self.refused = False
        self.dropped_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's own signature
        open_now = len(self.connections)
        if open_now >= self.max_connections:
            self.transport = transport
            linger = open_now < self.max_connections + LINGERING_MAX
            if linger:
                self.connections.add(self)  # its open file counts until it is closed
            self.refuse(
                "too_many_connections",
                f"The server holds its limit of {self.max_connections} open connections;"
                " retry in a moment.",
                retry_after=1,
                linger=linger,
            )
            return
        super().connection_made(transport)
        self.start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:  # lingering after the answer: dropped unparsed
            self.dropped_bytes += len(data)
            if self.dropped_bytes > LINGER_BYTES:
                self.transport.close()
            return
        # A head is fed at most up to the bound, so its bytes are never all read or parsed.
        while data and not self.refused and not self.transport.is_closing():
            if not self.in_head:
                super().data_received(data)  # body bytes: the app bounds the body
                return
            room = MAX_HEAD_BYTES - self.head_bytes
            if room <= 0:
                self.refuse(
                    "request_head_too_large",
                    f"The request line and headers must fit in {MAX_HEAD_BYTES} bytes.",
                )
                return
            piece, data = data[:room], data[room:]
            self.head_bytes += len(piece)
            super().data_received(piece)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head, self.head_bytes = True, 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next head's time starts with the answer (a pipelined head may be in already).
        if self.in_head and not self.transport.is_closing():
            self.start_head_timer()

    def start_head_timer(self) -> None:
        """Close the connection unless a whole head arrives in time."""
        self.cancel_head_timer()
        self.head_timer = self.loop.call_later(HEAD_TIMEOUT_SECONDS, self.head_timed_out)

    def cancel_head_timer(self) -> None:
        """The head arrived, or the connection ended."""
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        """Slowloris and idle connections: nothing may hold a connection without asking."""
        self.head_timer = None
        if self.transport.is_closing():
            return
        if self.head_bytes == 0:
            self.transport.close()  # as uvicorn's keep-alive timeout does: nothing was asked
            return
        self.refuse(
            "request_timeout",
            f"The request line and headers must arrive within {HEAD_TIMEOUT_SECONDS:g} s.",
        )

    def refuse(
        self,
        code: str,
        detail: str,
        retry_after: int | None = None,
        *,
        linger: bool = True,
    ) -> None:
        """Answer with a problem document, then close: lingering, after a FIN, dropping what
        follows for a while; or at once."""
        self.refused = True
        self.cancel_head_timer()
        self._unset_keepalive_if_required()
        self.transport.write(self.problem_bytes(code, detail, retry_after))
        if not linger:
            self.transport.close()
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def problem_bytes(self, code: str, detail: str, retry_after: int | None) -> bytes:
        """A whole HTTP/1.1 answer with an RFC 9457 body, written without the app; the status
        and title are the code's, as every other problem's (problems.PROBLEMS)."""
        status, title = PROBLEMS[code]
        body = orjson.dumps(
            {
                "type": f"/problems/{code}",
                "title": title,
                "status": status,
                "detail": detail,
                "code": code,
            }
        )
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(f"content-type: {MEDIA_TYPE}\r\n".encode())
        head.append(f"content-length: {len(body)}\r\n".encode())
        if retry_after is not None:
            head.append(f"retry-after: {retry_after}\r\n".encode())
        head.append(b"connection: close\r\n\r\n")
        return b"".join(head) + body


def raise_open_files_limit() -> int:
    """Raise this process's open-files soft limit to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def connection_bound(setting: int, open_files: int, redis_connections: int) -> int:
    """The HTTP connections one process may hold: the setting, within what its open files
    leave beside its Redis pool, the lingering refused ones and FILES_RESERVE."""
    if open_files == resource.RLIM_INFINITY:
        return setting
    spare = open_files - redis_connections - LINGERING_MAX - FILES_RESERVE
    return max(1, min(setting, spare))
