"""Grants waiting for a key: one listener per process wakes this replica's waiters in turn.

A waiting grant holds no Redis connection. It queues, first come first served, behind the
other grants waiting for the same process on this replica (this `Waiters`). While a process
has waiters here, one listener task blocks on its `freed` list, which every release pushes to,
and hands each signal it pops to the first waiter in the queue. So a replica holds one
connection per process that has waiters, not one per waiter, and the holders' renewals keep
the rest of the pool however many grants wait.

A woken waiter tries the grant again; if another grant took the key first it goes back to
the front of the queue. An expired lease pushes no signal (grants reclaim expired leases as
they go), so the queue also wakes its first waiter when the earliest lease is due to expire;
a waiter woken that way (or whose grant reclaimed expired leases) that gets a key wakes the
next one too, as that grant may have freed more keys than it took. A waiter woken by a
release's signal does not: that release freed one key, the one it took, so a release wakes
one waiter at the cost of one grant.

A pass that ends (PassComplete, AllQuarantined) ends every wait on it at once: the waiter that
learns of it answers its whole queue alike and pushes a signal back on `freed`, so another
replica's listener wakes its first waiter, which learns the same and passes it on in turn.

A grant whose caller leaves (its task cancelled) while its script is in flight is not cut: the
script runs to its end and what it granted is given back at once, rather than held, unclaimed,
for the whole lease.

Waiting grants and pass waits (`coordinator.runs`) count alike: at most `max_waiters` on the
replica, and of them at most a share (`TOKEN_SHARE`) from one holder, the API token that sent
them, so one team's waits cannot fill the replica and have another team's refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio.cluster import RedisCluster

from coordinator.errors import (
    AllQuarantined,
    CoordinatorError,
    NoFreeKey,
    PassComplete,
    StoreUnavailable,
)
from coordinator.unavailable import store_errors
from coordinator.wait_queue import WaitQueue, Wake

if TYPE_CHECKING:
    from coordinator.connection import RedisClient

# Short slices keep each blocking call inside the client's socket timeout.
BLOCK_SLICE_SECONDS = 0.5
# A process beyond the listeners' share of the pool checks its list this often instead.
POLL_SECONDS = 0.25
# Freed signals are pushed back with the lifetime release.lua gives them.
SIGNAL_TTL_MS = 60_000
DEFAULT_MAX_WAITERS = 10_000
# One API token (holder) may have this share of them, so one team cannot fill the replica:
# a tenth, at least one (1,000 of the default 10,000).
TOKEN_SHARE = 10
SHUTTING_DOWN = "The coordinator is shutting down."

T = TypeVar("T")
# What a grant answers when its process has nothing left to give: every wait on it ends.
PASS_ENDED = (PassComplete, AllQuarantined)

logger = logging.getLogger("coordinator")


class Waiters:
    """Every grant waiting on this replica, queued per process, and the listeners that wake
    them. At most `max_waiters` grants and pass waits wait at once, `max_waiters_per_token` of
    them one holder's; the next grant is refused at once with NoFreeKey."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        max_waiters_per_token: int | None = None,
        max_listeners: int | None = None,
    ) -> None:
        self.redis = redis
        self.max_waiters = max_waiters
        self.max_waiters_per_token = max_waiters_per_token or per_token_cap(max_waiters)
        # A listener blocks a pooled connection: listeners may take a quarter of the pool,
        # processes beyond that poll instead, so the holders' renewals always find one.
        self.max_listeners = max_listeners or max(1, _pool_size(redis) // 4)
        self.waiting = 0
        # Waits per holder; the empty holder (open mode, direct workers) is the replica's own.
        self._by_holder: dict[str, int] = {}
        self._queues: dict[str, WaitQueue] = {}
        self._listeners: set[asyncio.Task[None]] = set()
        self._giving_back: set[asyncio.Task[None]] = set()
        self._blocking = 0
        self._closed = False
        # Set when the replica stops waiting; made on first use, inside the running loop.
        self._stopping: asyncio.Future[Any] | None = None

    async def grant(
        self,
        freed: str,
        attempt: Callable[[], Coroutine[Any, Any, T]],
        wait_seconds: float,
        give_back: Callable[[T], Awaitable[object]],
        holder: str = "",
    ) -> T:
        """`attempt()` the grant; while it raises NoFreeKey, try again at each turn of this
        waiter in the queue of `freed` (its process's list), until `wait_seconds` pass.
        The wait counts as `holder`'s: past its cap or the replica's, NoFreeKey at once.

        A waiting grant may be cancelled (its caller left) at any moment: an attempt then in
        flight still runs to its end, and what it granted is handed to `give_back`.
        """
        if wait_seconds <= 0:
            # Nobody cancels a grant that does not wait, so it needs no guard (and no task).
            return await attempt()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        try:
            return await self._whole(attempt, give_back)
        except NoFreeKey as busy:
            if not self.has_room(holder):
                raise
            retry_after_us = busy.retry_after_us
        ended: CoordinatorError | None = None
        with self.counted(holder), self._joined(freed) as queue:
            front = False
            while True:
                queue.expect_expiry(retry_after_us)
                woken = await queue.woken(deadline, front=front)
                try:
                    granted = await self._whole(attempt, give_back)
                except NoFreeKey as busy:
                    if woken is None:
                        raise  # the wait is over
                    retry_after_us, front = busy.retry_after_us, True
                    continue
                except PASS_ENDED as error:
                    queue.end(error)  # the others here would only learn the same, one by one
                    ended = error
                    break
                # A release's signal freed one key, the one taken: waking the next waiter would
                # only cost a grant that finds none. Woken any other way (an expiry or backoff
                # due), or having reclaimed expired leases, this grant may have freed more
                # keys than it took, which no release signals: the next waiter looks.
                if woken is not Wake.FREED or _reclaimed(granted):
                    queue.wake_first()
                return granted
        # Outside the queue, so this replica's listener, once its queue is empty, stops rather
        # than taking the signal meant for the waiters of other replicas.
        await self._push(freed, ["pass-ended"])
        raise ended

    async def _whole(
        self,
        attempt: Callable[[], Coroutine[Any, Any, T]],
        give_back: Callable[[T], Awaitable[object]],
    ) -> T:
        """`attempt()`, shielded: cancelled, the caller leaves at once while the script runs on
        and what it granted goes to `give_back` (the reply would otherwise be dropped, and
        the key held by nobody until its lease expired)."""
        call = asyncio.ensure_future(attempt())
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            returning = asyncio.ensure_future(_hand_back(call, give_back))
            self._giving_back.add(returning)
            returning.add_done_callback(self._giving_back.discard)
            raise

    def has_room(self, holder: str = "") -> bool:
        """Whether one more wait of `holder` fits under the replica's cap and its own."""
        if self.waiting >= self.max_waiters:
            return False
        return not holder or self._by_holder.get(holder, 0) < self.max_waiters_per_token

    @contextlib.contextmanager
    def counted(self, holder: str = "") -> Iterator[None]:
        """Count one wait (a grant's or a pass's) as this replica's and `holder`'s."""
        self.waiting += 1
        self._by_holder[holder] = self._by_holder.get(holder, 0) + 1
        try:
            yield
        finally:
            self.waiting -= 1
            left = self._by_holder.pop(holder) - 1
            if left:
                self._by_holder[holder] = left

    @property
    def listeners(self) -> int:
        """Listener tasks running: one per process with waiters here."""
        return len(self._listeners)

    def stop_waiting(self) -> None:
        """Answer every waiting grant and pass wait StoreUnavailable now, and every later one
        at once: the replica is shutting down. Grants already trying a key finish."""
        self._closed = True
        for queue in self._queues.values():
            queue.fail(SHUTTING_DOWN, for_good=True)
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)

    async def unless_stopping(self, wait: Awaitable[T]) -> T:
        """`wait`'s result, or StoreUnavailable (`wait` cancelled) once the replica stops
        waiting (`stop_waiting`): for waits that are not grants, such as a pass's."""
        work = asyncio.ensure_future(wait)
        if self._closed:
            work.cancel()
            raise StoreUnavailable(SHUTTING_DOWN)
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait({work, self._stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
        if not work.done() or work.cancelled():
            raise StoreUnavailable(SHUTTING_DOWN)
        return work.result()

    async def aclose(self) -> None:
        """Stop every listener and answer every waiter 503: the replica is shutting down.
        Keys granted to callers who left are given back first."""
        self.stop_waiting()
        await asyncio.gather(*self._giving_back, return_exceptions=True)
        for listener in self._listeners:
            listener.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)

    @contextlib.contextmanager
    def _joined(self, freed: str) -> Iterator[WaitQueue]:
        """Be one of the waiters of `freed`'s queue, starting its listener if it has none."""
        if self._closed:
            raise StoreUnavailable(SHUTTING_DOWN)
        queue = self._queues.get(freed)
        if queue is None:
            queue = self._queues[freed] = WaitQueue(freed)
            listener = asyncio.get_running_loop().create_task(
                self._listen(queue), name=f"waiters {freed}"
            )
            self._listeners.add(listener)
            listener.add_done_callback(self._listeners.discard)
        queue.members += 1
        try:
            yield queue
        finally:
            queue.members -= 1
            if not queue.members:
                queue.close()

    async def _listen(self, queue: WaitQueue) -> None:
        """Hand the queue the signals of its `freed` list while it has members."""
        blocking = False
        try:
            while queue.members:
                if not blocking and self._blocking < self.max_listeners:
                    self._blocking += 1
                    blocking = True
                try:
                    freed_key = await self._pop(queue.freed, block=blocking)
                except StoreUnavailable as error:
                    queue.fail(str(error))
                    await asyncio.sleep(POLL_SECONDS)
                    continue
                if freed_key is not None:
                    queue.signal(freed_key)
        finally:
            # No await since the last member left, so a new waiter either joined this queue
            # in time or finds none and starts its own.
            if blocking:
                self._blocking -= 1
            del self._queues[queue.freed]
        if queue.banked:
            # Signals no waiter here used may be for another replica's waiters: give them back.
            await self._push(queue.freed, queue.banked)

    async def _push(self, freed: str, signals: list[str]) -> None:
        """Push wake-up signals on `freed` as the scripts do (RPUSH: a worker's ACL user has no
        LPUSH), for another replica's listener; lost if Redis is away, as a release's are."""
        with contextlib.suppress(StoreUnavailable), store_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(freed, *signals)
                pipe.pexpire(freed, SIGNAL_TTL_MS)
                await pipe.execute()

    async def _pop(self, freed: str, *, block: bool) -> str | None:
        """Take one signal off `freed`: blocking for a slice, or polling once."""
        with store_errors():
            if block:
                popped = await self.redis.blpop([freed], timeout=BLOCK_SLICE_SECONDS)
                return None if popped is None else str(popped[1])
            # Not a blocking pop however short: that would hold a connection past the share.
            freed_key = await self.redis.lpop(freed)
        if freed_key is None:
            await asyncio.sleep(POLL_SECONDS)
            return None
        return str(freed_key)


def _reclaimed(granted: object) -> int:
    """Expired leases a grant ended (grant.lua's reply, element 9), for replies of that shape."""
    if isinstance(granted, list) and len(granted) > 8:
        return int(granted[8] or 0)
    return 0


def per_token_cap(max_waiters: int) -> int:
    """The waits one token may have on a replica that allows `max_waiters` in all."""
    return max(1, max_waiters // TOKEN_SHARE)


async def _hand_back(call: asyncio.Future[T], give_back: Callable[[T], Awaitable[object]]) -> None:
    """Wait for a grant whose caller left, and give back what it granted."""
    try:
        granted = await call
    except CoordinatorError:
        return  # it took nothing
    try:
        await give_back(granted)
    except CoordinatorError as error:
        logger.warning("a key granted to a caller who left stays held until it expires: %s", error)


def _pool_size(redis: RedisClient) -> int:
    """How many connections the client may open (per node, on a cluster)."""
    if isinstance(redis, RedisCluster):
        return int(redis.connection_kwargs.get("max_connections", 64))
    return int(redis.connection_pool.max_connections)
