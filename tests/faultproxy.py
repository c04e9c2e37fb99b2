"""A fault-injecting TCP proxy for tests: it sits between a client (a replica, a store) and
Valkey and does to the traffic what a bad network does, switched at run time.

    async with FaultProxy("127.0.0.1", valkey.port) as proxy:   # in the test's own loop
        ...
    with FaultProxy("127.0.0.1", valkey.port).threaded() as proxy:  # its own thread and loop,
        ...                                    # e.g. under a subprocess `coordinator serve`

    proxy.faults.latency_down = 0.5      # replies arrive 0.5 s late (latency_up: requests)
    proxy.faults.throttle = 2_000        # bytes/s each way; 0 stops reading: buffers fill
    proxy.faults.blackhole = True        # read everything, forward and answer nothing
    proxy.faults.reset_mid_reply = True  # the next reply is cut in two by a reset
    proxy.reset_connections()            # reset every open connection now (an idle RST)
    proxy.faults.clear()                 # a healthy network again

Fields of `faults` may be set from any thread; each chunk of data reads them as it passes. A
reset is a real RST (SO_LINGER 0, then close), so the client sees ECONNRESET, not an EOF.
A connection whose bytes a blackhole swallowed can never carry a whole command again (TCP
would have delivered them or died): it is reset on its next byte once the blackhole lifts,
as a middlebox that lost the connection's state does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

CHUNK = 65536
POLL = 0.01  # how often a stalled direction looks at the faults again


@dataclass
class Faults:
    """What the proxy does to the traffic now."""

    latency_up: float = 0.0  # seconds added to each chunk from client to server
    latency_down: float = 0.0  # seconds added to each chunk from server to client
    throttle: float | None = None  # bytes per second each way; 0 = stop reading altogether
    blackhole: bool = False  # read and drop everything, both ways
    reset_mid_reply: bool = False  # reset a connection halfway through a chunk from the server

    def clear(self) -> None:
        """No fault at all."""
        for spec in fields(self):
            setattr(self, spec.name, spec.default)


class _Link:
    """One client connection and its connection to the server."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client, self.server = client, server
        self.swallowed = False  # a blackhole dropped some of its bytes
        self.closed = False

    def reset(self) -> None:
        """RST both sides: SO_LINGER 0 makes close() send a reset instead of a FIN."""
        if self.closed:
            return
        self.closed = True
        for _, writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class FaultProxy:
    """Listens on a free loopback port and forwards to `host:port`, with `faults` applied."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.faults = Faults()
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # the pumps
        self._handlers: set[asyncio.Task[None]] = set()  # one per accepted connection
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """A redis:// URL that reaches the server through the proxy."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections currently open through the proxy."""
        return sum(1 for link in self._links if not link.closed)

    async def start(self) -> FaultProxy:
        """Start listening (in the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        """Stop listening and reset every connection."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Not cancelled: asyncio's server logs a handler that ends cancelled as an error.
        await asyncio.wait(self._handlers, timeout=5) if self._handlers else None
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    @contextlib.contextmanager
    def threaded(self) -> Iterator[FaultProxy]:
        """Run the proxy on an event loop of its own in a thread, for the block's length."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    def reset_connections(self) -> int:
        """Reset every open connection now, from any thread; how many there were."""
        return self._in_loop(self._reset_all)

    def _reset_all(self) -> int:
        links = [link for link in self._links if not link.closed]
        for link in links:
            link.reset()
        return len(links)

    def _in_loop(self, action: Callable[[], int]) -> int:
        """Run `action` on the proxy's loop and return its result, whichever thread asks."""
        loop = self._loop
        assert loop is not None, "the proxy is not started"
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return action()

        async def run() -> int:
            return action()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        current = asyncio.current_task()
        assert current is not None
        self._handlers.add(current)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(current)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        link = _Link((reader, writer), server)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._pump(link, reader, server[1], up=True)),
            asyncio.create_task(self._pump(link, server[0], writer, up=False)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            self._links.discard(link)
            link.reset()

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        """Forward one direction: read a chunk, apply the faults, write it on, in order.

        Reading and writing are two tasks joined by a short queue, so latency delays each
        chunk without slowing the stream, and a stalled writer stops the reading too (the
        sender's buffers fill, as behind a stalled peer)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=4)
        writer = asyncio.create_task(self._forward(link, queue, sink, up=up))
        try:
            while not link.closed:
                while self.faults.throttle == 0 and not link.closed:  # noqa: ASYNC110 - set from any thread
                    await asyncio.sleep(POLL)
                data = await source.read(CHUNK)
                if not data:
                    break
                if self.faults.blackhole:
                    link.swallowed = True
                    continue
                if link.swallowed:
                    break  # its stream lost bytes: the reset below is all it can get now
                delay = self.faults.latency_up if up else self.faults.latency_down
                await queue.put((time.monotonic() + delay, data))
            if not link.closed:
                await queue.join()  # what was read before the end is still delivered
        except OSError:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await writer
            link.reset()

    async def _forward(
        self,
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes]],
        sink: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        while True:
            due, data = await queue.get()
            try:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if link.closed:
                    continue  # reset: what is queued is lost with it
                if not up and self.faults.reset_mid_reply:
                    sink.write(data[: max(1, len(data) // 2)])
                    link.reset()
                    continue
                await self._write(link, sink, data)
            finally:
                queue.task_done()

    async def _write(self, link: _Link, sink: asyncio.StreamWriter, data: bytes) -> None:
        """Write `data`, no faster than the throttle allows, in pieces of 1/20 s each."""
        while data and not link.closed:
            rate = self.faults.throttle
            if rate == 0:
                await asyncio.sleep(POLL)
                continue
            piece = len(data) if rate is None else max(1, int(rate * 0.05))
            sink.write(data[:piece])
            await sink.drain()
            data = data[piece:]
            if rate is not None:
                await asyncio.sleep(piece / rate)
