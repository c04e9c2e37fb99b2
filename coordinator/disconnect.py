"""Stop waiting for a client that has gone.

A grant with `wait_seconds` may wait up to a minute. If its client goes away meanwhile (Ctrl-C,
its own timeout), nobody would receive the key the wait ends with: the next release would hand
it to nobody until its lease expired, and a graceful shutdown would wait for it. So the wait
runs beside a watch on the connection, and a disconnect cancels it (the waiter leaves its
queue, see `waiters`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone (with `work` cancelled) if the client leaves first.

    Call it once the body has been read: from then on, the next ASGI message is the
    disconnect (servers answer `receive()` with it only when the client has gone).
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    if task.done():
        return task.result()  # done first (or at the same moment): the answer stands
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
