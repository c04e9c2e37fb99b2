"""Auto-pipelining: the scripts' calls from concurrent requests share one connection and one
write per turn of the event loop.

With a connection pool, each script call checks a connection out, writes its command, waits
for its reply and checks the connection back in; under load, much of the time a request
spends in Python is that bookkeeping, and every call is a write and a read of its own. Here,
every call made during one turn of the event loop is packed into one buffer and written at
once on one connection taken from the client's own pool; the replies come back in order and
are handed to their callers as they are read. Redis runs a connection's commands one after
another, so each script call stays exactly as atomic as before; only the round trips are
shared. This is what ioredis (`enableAutoPipelining`), Lettuce and valkey-glide do.

The connection is redis-py's (so AUTH, SELECT, TLS and Sentinel discovery are its), read with
its own `read_response`: error replies raise redis-py's exceptions. When the oldest call in
flight has waited longer than the client's socket timeout, the connection is dropped and its
calls raise redis-py's TimeoutError (one timer for the connection, not a timeout per reply);
every call in flight on a connection that fails, however it fails (uvloop's RuntimeError on
a closed transport, an OSError, a malformed reply), raises ConnectionError (the store answers
503 either way); the next call takes a new connection. A dropped connection is aborted, not
closed gracefully (a graceful close waits to flush buffers a stalled peer never drains), and
always goes back to the pool. A connection the peer closed while idle (a middlebox's reset)
is seen before the next write and replaced, and a batch whose write provably never left
(the transport refused it) is sent again on a new connection once: an idle reset costs no
call. Closing the client closes this connection with the rest of its pool. A cluster and
fakeredis keep redis-py's one-call-per-connection path (`for_client`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | int


def pack(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + _bulks(args)


def _bulks(args: tuple[Arg, ...] | list[Arg]) -> bytes:
    parts = []
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else b"%d" % arg
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


# Packed `EVALSHA sha numkeys keys...` heads, by script and keys: a process's keys are the
# same on every call, so only the arguments are packed each time. Bounded: cleared when full.
_HEADS: dict[tuple[str, tuple[str, ...]], bytes] = {}
_HEADS_MAX = 10_000


def _stream(connection: AbstractConnection) -> asyncio.StreamWriter:
    """The connection's socket stream, written directly: redis-py's send_packed_command
    runs each write in a task of its own (wait_for) and raises uvloop's RuntimeError raw."""
    stream = connection._writer  # private in redis-py: see above
    if stream is None:
        raise _lost("the connection is not open")
    return stream


def peer_closed(connection: AbstractConnection) -> bool:
    """Whether the peer has closed or reset `connection` (or it is not open); the loop reads
    every socket all the time, so a reset that came while it was idle is already seen."""
    reader, writer = connection._reader, connection._writer  # redis-py has no public check
    return reader is None or writer is None or writer.transport.is_closing() or reader.at_eof()


def _lost(why: str) -> RedisConnectionError:
    return RedisConnectionError(f"Redis connection lost: {why}")


def _unavailable(error: Exception) -> Exception:
    """`error` as the calls it fails see it: redis-py's own errors as they are, anything else
    the transport raised (RuntimeError, OSError, ...) as ConnectionError, so it answers 503."""
    if isinstance(error, RedisError):
        return error
    lost = _lost(f"{type(error).__name__}: {error}")
    lost.__cause__ = error
    return lost


class AutoPipeline:
    """Sends commands on one pooled connection, every command of one loop turn in one write."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._connection: AbstractConnection | None = None
        self._buffer: list[bytes] = []
        self._queued: list[asyncio.Future[Any]] = []
        # Sent, in reply order, with when they were sent.
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._timeout: float | None = pool.connection_kwargs.get("socket_timeout")
        self._watchdog: asyncio.TimerHandle | None = None
        self._dropping: asyncio.Future[None] | None = None  # a drop the watchdog started
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def for_client(cls, redis: object) -> AutoPipeline | None:
        """A pipeline on the pool of `redis`, or None for a client it cannot serve: a cluster
        (a client per node) or anything but redis-py's own Redis class (fakeredis)."""
        if not isinstance(redis, Redis) or type(redis).__module__.startswith("fakeredis"):
            return None
        if not redis.connection_pool.connection_kwargs.get("decode_responses"):
            return None  # the store reads str replies
        return cls(redis.connection_pool)

    async def execute(self, *args: Arg) -> Any:  # noqa: ANN401 - a Redis reply
        """Send one command; its reply, or redis-py's exception for an error reply."""
        return await self._send(pack(args))

    async def evalsha(self, sha: str, keys: list[str], args: list[Arg]) -> Any:  # noqa: ANN401 - a script reply
        """EVALSHA `sha` on `keys` with `args`; its reply, or redis-py's exception."""
        head_key = (sha, tuple(keys))
        head = _HEADS.get(head_key)
        if head is None:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            head = _HEADS[head_key] = _bulks(("EVALSHA", sha, len(keys), *keys))
        return await self._send(b"*%d\r\n" % (3 + len(keys) + len(args)) + head + _bulks(args))

    async def _send(self, command: bytes) -> Any:  # noqa: ANN401 - a Redis reply
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._buffer.append(command)
        self._queued.append(future)
        if self._writer is None:
            # Started now, it runs after every task ready in this turn has queued its call.
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        """Write what is queued, in one write per turn, until nothing is."""
        try:
            resent = False  # whether this batch was already sent again once
            while self._buffer:
                buffer, futures = self._buffer, self._queued
                self._buffer, self._queued = [], []
                connection = self._connection
                try:
                    if connection is not None and peer_closed(connection):
                        # Reset or closed by the peer since the last write: its calls in
                        # flight have lost their replies; this batch takes a new connection.
                        await self._drop(connection, _lost("the peer closed the connection"))
                    connection = await self._connected()
                    stream = _stream(connection)
                    stream.write(b"".join(buffer))
                    if peer_closed(connection) and not resent:
                        # The transport closed as it tried to send: none of these bytes left,
                        # so sending them again on a new connection cannot run a call twice.
                        resent = True
                        await self._drop(connection, _lost("the connection closed on write"))
                        self._buffer, self._queued = buffer + self._buffer, futures + self._queued
                        continue
                    resent = False
                    sent = time.monotonic()
                    self._waiting.extend((future, sent) for future in futures)
                    if self._timeout is not None and self._watchdog is None:
                        # Armed before draining: a write that never drains is timed too.
                        self._watchdog = asyncio.get_running_loop().call_later(
                            self._timeout, self._check, connection
                        )
                    await stream.drain()
                except Exception as error:  # noqa: BLE001 - handed to every call it concerns
                    await self._drop(connection, _unavailable(error), futures)
                    continue
                except BaseException:
                    interrupted = RedisConnectionError("a pipelined write was interrupted")
                    await self._drop(connection, interrupted, futures)
                    raise
                if self._reader is None:
                    self._reader = asyncio.create_task(self._read())
        finally:
            self._writer = None

    async def _read(self) -> None:
        """Hand each reply to the call it answers, while any is awaited."""
        try:
            # Calls are awaited only on the current connection (see _drop).
            while self._waiting and (connection := self._connection) is not None:
                try:
                    # No timeout per reply (a context each): _check times the oldest call.
                    reply: Any = await connection.read_response(timeout=math.inf)
                except ResponseError as error:  # an error reply: the call's, not the stream's
                    reply = error
                except Exception as error:  # noqa: BLE001 - handed to every call in flight
                    await self._drop(connection, _unavailable(error))
                    continue
                except BaseException:
                    await self._drop(connection, RedisConnectionError("a read was interrupted"))
                    raise
                future, _ = self._waiting.popleft()
                if future.done():  # its caller was cancelled; the reply is not theirs to take
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        finally:
            self._reader = None

    def _check(self, connection: AbstractConnection) -> None:
        """Drop `connection` if its oldest call has waited past the timeout; else look again
        when it would have."""
        self._watchdog = None
        if connection is not self._connection or not self._waiting or self._timeout is None:
            return
        waited = time.monotonic() - self._waiting[0][1]
        if waited >= self._timeout:
            late = RedisTimeoutError(f"Redis did not answer within {self._timeout:g} s")
            self._dropping = asyncio.ensure_future(self._drop(connection, late))
            return
        self._watchdog = asyncio.get_running_loop().call_later(
            self._timeout - waited, self._check, connection
        )

    async def _connected(self) -> AbstractConnection:
        if self._connection is None:
            self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]  # untyped in redis-py
        return self._connection

    async def _drop(
        self,
        connection: AbstractConnection | None,
        error: Exception,
        also: Sequence[asyncio.Future[Any]] = (),
    ) -> None:
        """`connection` failed: every call awaiting it (and `also`) raises `error`, and it
        goes back to the pool closed. A connection dropped already has no calls left."""
        current = connection is not None and connection is self._connection
        pending = [*also, *(future for future, _ in self._waiting)] if current else list(also)
        if current:
            self._waiting.clear()
            self._connection = None
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
        for future in pending:
            if not future.done():
                future.set_exception(error)
        if current and connection is not None:
            try:
                # Aborted, not closed: a graceful close waits to flush what a stalled peer
                # will never read, and used to time out here and lose the pool its slot.
                stream = connection._writer  # redis-py exposes no abort
                if stream is not None:
                    stream.transport.abort()
                await connection.disconnect(nowait=True)
            except Exception:  # noqa: BLE001, S110 - a close that fails still frees the slot
                pass
            finally:
                await self._pool.release(connection)

    async def aclose(self) -> None:
        """Give the connection back to the pool; calls still in flight raise ConnectionError."""
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()
        await self._drop(self._connection, RedisConnectionError("the pipeline was closed"))
