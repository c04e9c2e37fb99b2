"""Pass waits share one reader of each process's history on this replica.

A pass wait (GET .../passes/<n>?wait_seconds=N) ends when its pass completes, a new pass
starts or the process goes. Rather than each wait reading the history on its own (1,500 waits
on one process cost 0.92 cores, polling), one task per process with waiters reads it and wakes
them all when an entry that can end a wait arrives; the entries every grant and renewal write
wake nobody. Readers block on a pooled connection, up to `max_readers` at once; the processes
beyond that poll instead, so waiting never starves the holders' renewals of the pool.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from coordinator.errors import CoordinatorError
from coordinator.unavailable import store_errors

if TYPE_CHECKING:
    from coordinator.connection import RedisClient

# A reader blocks on the history in slices this long (inside the client's socket timeout).
READ_SLICE_SECONDS = 0.5
# Beyond this many blocked readers per replica, a reader polls this often instead.
MAX_READERS = 8
POLL_SECONDS = 0.25
# Entries read at once; a full batch is followed by another read at once.
READ_COUNT = 100
# The history entries after which a pass wait may have an answer; grants, renewals and
# releases are the bulk of the history and change no pass.
WAKING_TYPES = frozenset({"pass-completed", "pass-failed", "pass-started", "deleted", "registered"})


class PassWatch:
    """One history reader per process with pass waits here, waking every wait on it."""

    def __init__(self, redis: RedisClient, *, max_readers: int = MAX_READERS) -> None:
        self.redis = redis
        self._readers = asyncio.Semaphore(max_readers)
        self._watches: dict[str, _Watch] = {}

    @property
    def readers(self) -> int:
        """Reader tasks running: one per process with pass waits here."""
        return len(self._watches)

    async def changed(self, events: str, after: str, seconds: float) -> None:
        """Until the history `events` holds, read up to entry id `after`, gets an entry that
        may end a pass wait, or `seconds` pass. Raises StoreUnavailable if Redis is away."""
        watch = self._watches.get(events)
        if watch is None:
            watch = self._watches[events] = _Watch(events, after)
            watch.task = asyncio.get_running_loop().create_task(
                self._read(watch), name=f"pass watch {events}"
            )
        elif _stream_id(after) < watch.start or _stream_id(after) < watch.last_waking:
            # This wait read the pass before an entry the reader may have passed by: its
            # answer may be ready, so it reads the pass again.
            return
        watch.members += 1
        try:
            # Unlike wait_for, wait leaves the shared future alone when this wait times out.
            woken = watch.woken
            done, _ = await asyncio.wait({woken}, timeout=seconds)
            if done:
                woken.result()  # raises the reader's failure
        finally:
            watch.members -= 1

    async def aclose(self) -> None:
        """Stop every reader (the replica is shutting down)."""
        tasks = [watch.task for watch in self._watches.values() if watch.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, watch: _Watch) -> None:
        """Read `watch`'s history while it has waits, waking them at each waking entry."""
        try:
            while watch.members:
                if await self._read_once(watch):
                    watch.wake()
        except CoordinatorError as error:
            watch.wake(error)  # every wait here answers it; the next wait starts a new reader
        finally:
            # No await since the last wait left, so a new one either joined in time or
            # starts a reader of its own.
            del self._watches[watch.events]
            watch.wake()

    async def _read_once(self, watch: _Watch) -> bool:
        """One read past `watch.seen`: whether it found an entry that may end a wait."""
        blocking = not self._readers.locked()
        with store_errors():
            if blocking:
                async with self._readers:
                    reply: Any = await self.redis.xread(
                        {watch.events: watch.seen},
                        count=READ_COUNT,
                        block=int(READ_SLICE_SECONDS * 1000),
                    )
            else:
                reply = await self.redis.xread({watch.events: watch.seen}, count=READ_COUNT)
        entries = _entries(reply)
        if not entries and not blocking:
            await asyncio.sleep(POLL_SECONDS)
        waking = [entry_id for entry_id, fields in entries if fields.get("type") in WAKING_TYPES]
        if entries:
            watch.seen = entries[-1][0]
        if waking:
            watch.last_waking = _stream_id(waking[-1])
        return bool(waking)


class _Watch:
    """The pass waits on one process's history, and how far its reader has read."""

    def __init__(self, events: str, seen: str) -> None:
        self.events = events
        # Read from `start` on; `last_waking` is the newest entry read that woke the waits.
        self.start = _stream_id(seen)
        self.seen = seen
        self.last_waking = (0, 0)
        self.members = 0
        self.task: asyncio.Task[None] | None = None
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(self, error: CoordinatorError | None = None) -> None:
        """Answer every wait now (with `error`, if any); later ones wait for the next entry."""
        if not self.woken.done():
            if error is None or not self.members:
                self.woken.set_result(None)
            else:
                self.woken.set_exception(error)  # each wait here retrieves it
        self.woken = asyncio.get_running_loop().create_future()


def _stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id, "<ms>-<seq>", as a pair that sorts as the stream does."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:  # noqa: ANN401 - a Redis reply
    """XREAD's entries of its one stream (RESP2 lists streams, RESP3 maps them)."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [s[1] for s in reply]
    return [(str(entry_id), dict(fields or {})) for entry_id, fields in streams[0]]
