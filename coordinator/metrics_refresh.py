"""Refreshes the /metrics snapshot in the background, one API process at a time.

Reading every process's figures is proportional to the processes (eight reads each), so it
is kept off the request path: a task of each API process, from its first scrape on, tries
every half interval to take the refresher's turn (SET NX PX on one key shared by every
worker and replica). The one that takes it reads the registry page by page (stats.CHUNK
names, one pipeline each), yielding to the event loop between pages, and stores the result
as one value (metrics_snapshot) that every scrape reads with one GET. The turn lasts the
interval after the refresh ends, and at least `PAUSE_RATIO` times the refresh's own length,
so reading takes at most a fifth of one API process's time however many processes exist.
Until the first scrape nothing is read, so a deployment nobody scrapes pays nothing; a
scrape that finds no snapshot at all waits up to FIRST_WAIT_SECONDS for the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from coordinator.metrics_snapshot import Snapshot, SnapshotBuilder
from coordinator.stats import CHUNK, page_stats, registry_pages

if TYPE_CHECKING:
    from collections.abc import Iterable

    from coordinator.connection import RedisClient
    from coordinator.keys import KeySpace

logger = logging.getLogger("coordinator")

# How long a scrape that finds no snapshot yet waits for this process's first refresh.
FIRST_WAIT_SECONDS = 1.0
# The pause after a refresh is at least this many times as long as the refresh took.
PAUSE_RATIO = 4
# A stored snapshot outlives this many pauses (at least a minute), then goes: one nobody
# refreshes any more is not served as current for long.
KEEP_PAUSES = 10
KEEP_MIN_MS = 60_000


class MetricsRefresher:
    """Keeps the shared metrics snapshot at most about an interval old while scraped."""

    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        *,
        interval_seconds: float,
        limit: int,
        named: Iterable[str] = (),
        chunk: int = CHUNK,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.interval_ms = max(1, int(interval_seconds * 1000))
        self.limit = limit
        self.named = tuple(named)
        self.chunk = chunk
        # Who holds the turn, in the lock's value: which host and process, for an operator.
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.refreshes = 0  # refreshes this process made
        self._wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tried = asyncio.Event()  # set once this process first tried to refresh
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        """Start the background task (it reads nothing until `want` is called)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics refresh")

    def want(self) -> None:
        """A scrape came: keep the snapshot fresh from now on."""
        self._wanted.set()

    async def aclose(self) -> None:
        """Stop the background task (the API process is shutting down)."""
        if self._task is not None:
            # Both: a Redis client may swallow the cancellation mid-command (fakeredis does),
            # and the loop then ends at its next pause.
            self._stopping.set()
            self._wanted.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def snapshot(self) -> Snapshot | None:
        """The stored snapshot, in one GET; None before the first refresh."""
        return Snapshot.decode(await self.redis.get(self.keys.metrics_snapshot))

    async def first_snapshot(self, seconds: float) -> Snapshot | None:
        """The snapshot once this process has tried to refresh, waiting up to `seconds` for
        that: so the first scrape of a deployment already has figures."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), seconds)
        return await self.snapshot()

    async def refresh_if_due(self) -> Snapshot | None:
        """Refresh if it is this process's turn (no other refresh in the current interval)."""
        turn = self.keys.metrics_refresher
        if not await self.redis.set(turn, self.identity, nx=True, px=self.interval_ms):
            return None
        return await self.refresh()

    async def refresh(self) -> Snapshot:
        """Read every process's figures, page by page, and store the snapshot."""
        started = time.monotonic()
        previous = await self.snapshot()
        builder = SnapshotBuilder(self.limit, self.named)
        extended = started
        async for page in registry_pages(self.redis, self.keys, self.chunk):
            builder.add(await page_stats(self.redis, self.keys, page))
            if time.monotonic() - extended > self.interval_ms / 2000:
                # A long refresh keeps its turn, so no other process starts one meanwhile.
                extended = time.monotonic()
                await self.redis.set(
                    self.keys.metrics_refresher, self.identity, px=self.interval_ms
                )
            # A page's replies may all be buffered already, and awaiting them then never
            # returns to the loop: hand it over between pages.
            await asyncio.sleep(0)
            if self._stopping.is_set():
                raise asyncio.CancelledError  # shutting down: a half-read snapshot is not stored
        seconds = time.monotonic() - started
        snapshot = builder.build(
            sequence=(previous.sequence if previous is not None else 0) + 1,
            taken_us=int(time.time() * 1_000_000),
            refresh_seconds=seconds,
        )
        pause_ms = max(self.interval_ms, int(seconds * 1000 * PAUSE_RATIO))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(
                self.keys.metrics_snapshot,
                snapshot.encode(),
                px=max(KEEP_MIN_MS, KEEP_PAUSES * pause_ms),
            )
            pipe.set(self.keys.metrics_refresher, self.identity, px=pause_ms)
            await pipe.execute()
        self.refreshes += 1
        return snapshot

    async def _run(self) -> None:
        """From the first scrape on, take the turn whenever it is free."""
        await self._wanted.wait()
        while not self._stopping.is_set():
            try:
                await self.refresh_if_due()
            except RedisError as error:
                if not self._failing:  # once per outage, not every half interval
                    logger.warning("metrics: refreshing the snapshot failed: %s", error)
                self._failing = True
            except Exception:  # a bug here must not end the refreshing for good: logged
                logger.exception("metrics: refreshing the snapshot failed")
                self._failing = True
            else:
                self._failing = False
            self._tried.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_ms / 2000)
