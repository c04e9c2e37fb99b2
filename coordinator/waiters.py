"""Grants waiting for a key: one listener per process wakes this replica's waiters in turn.

A waiting grant holds no Redis connection. It queues, first come first served, behind the
other grants waiting for the same process on this replica (this `Waiters`). While a process
has waiters here, one listener task blocks on its `freed` list, which every release pushes to,
and hands each signal it pops to the first waiter in the queue. So a replica holds one
connection per process that has waiters, not one per waiter, and the holders' renewals keep
the rest of the pool however many grants wait.

A woken waiter tries the grant again; if another grant took the key first it goes back to
the front of the queue. An expired lease pushes no signal (grants reclaim expired leases as
they go), so the queue also wakes its first waiter when the earliest lease is due to expire,
and every waiter that gets a key wakes the next one too: that grant may have reclaimed more
expired keys than it took.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from redis.asyncio.cluster import RedisCluster

from coordinator.errors import NoFreeKey, StoreUnavailable
from coordinator.unavailable import store_errors

if TYPE_CHECKING:
    from coordinator.connection import RedisClient

# Short slices keep each blocking call inside the client's socket timeout.
BLOCK_SLICE_SECONDS = 0.5
# A process beyond the listeners' share of the pool checks its list this often instead.
POLL_SECONDS = 0.25
# Wake a little after the earliest lease's expiry, not a little before it.
EXPIRY_MARGIN_SECONDS = 0.002
# Freed signals are pushed back with the lifetime release.lua gives them.
SIGNAL_TTL_MS = 60_000
DEFAULT_MAX_WAITERS = 10_000
SHUTTING_DOWN = "The coordinator is shutting down."

T = TypeVar("T")


class WaitQueue:
    """The grants of one process waiting on this replica, in turn order, and what wakes them."""

    def __init__(self, freed: str) -> None:
        self.freed = freed
        self.members = 0  # waiting for their turn, or trying the grant after it came
        # Signals popped while no member was waiting for its turn: the next turn takes one,
        # and the listener gives back those left when the last member goes.
        self.banked: list[str] = []
        self._turns: deque[asyncio.Future[None]] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self._closed_for: str | None = None

    def signal(self, freed_key: str) -> None:
        """A key was released: wake the first waiter, or keep the signal for the next one."""
        if not self.wake_first():
            self.banked.append(freed_key)

    def wake_first(self) -> bool:
        """Wake the waiter at the front of the queue; False when none is waiting."""
        if not self._turns:
            return False
        self._turns.popleft().set_result(None)
        return True

    def expect_expiry(self, retry_after_us: int) -> None:
        """The earliest lease expires in `retry_after_us`: then wake the first waiter (one,
        not all: if it gets the key, it wakes the next)."""
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0, retry_after_us) / 1e6 + EXPIRY_MARGIN_SECONDS
        self._expiry = asyncio.get_running_loop().call_later(delay, self.wake_first)

    def fail(self, detail: str, *, for_good: bool = False) -> None:
        """Answer every waiter StoreUnavailable; `for_good`, also those who come back later."""
        if for_good:
            self._closed_for = detail
        while self._turns:
            self._turns.popleft().set_exception(StoreUnavailable(detail))

    def close(self) -> None:
        """The last member left."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def turn(self, deadline: float, *, front: bool) -> bool:
        """Wait until this waiter is woken (True) or `deadline`, in loop time, passes (False)."""
        if self._closed_for is not None:
            raise StoreUnavailable(self._closed_for)
        if self.banked:
            self.banked.pop()
            return True
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        if front:
            self._turns.appendleft(turn)
        else:
            self._turns.append(turn)
        try:
            # Unlike wait_for, wait leaves `turn` alone when it times out or is cancelled.
            await asyncio.wait([turn], timeout=max(0.0, deadline - loop.time()))
        except asyncio.CancelledError:
            if not turn.done():
                self._turns.remove(turn)
            elif turn.exception() is None:
                self.signal("")  # woken, but its caller hung up: the next waiter goes instead
            raise
        if not turn.done():
            self._turns.remove(turn)
            return False
        turn.result()  # raises the failure the listener or shutdown set
        return True


class Waiters:
    """Every grant waiting on this replica, queued per process, and the listeners that wake
    them. At most `max_waiters` wait at once; the next is refused at once with NoFreeKey."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        max_listeners: int | None = None,
    ) -> None:
        self.redis = redis
        self.max_waiters = max_waiters
        # A listener blocks a pooled connection: listeners may take a quarter of the pool,
        # processes beyond that poll instead, so the holders' renewals always find one.
        self.max_listeners = max_listeners or max(1, _pool_size(redis) // 4)
        self.waiting = 0
        self._queues: dict[str, WaitQueue] = {}
        self._listeners: set[asyncio.Task[None]] = set()
        self._blocking = 0
        self._closed = False

    async def grant(
        self, freed: str, attempt: Callable[[], Awaitable[T]], wait_seconds: float
    ) -> T:
        """`attempt()` the grant; while it raises NoFreeKey, try again at each turn of this
        waiter in the queue of `freed` (its process's list), until `wait_seconds` pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        try:
            return await attempt()
        except NoFreeKey as busy:
            if wait_seconds <= 0 or self.waiting >= self.max_waiters:
                raise
            retry_after_us = busy.retry_after_us
        with self._joined(freed) as queue:
            front = False
            while True:
                queue.expect_expiry(retry_after_us)
                woken = await queue.turn(deadline, front=front)
                try:
                    granted = await attempt()
                except NoFreeKey as busy:
                    if not woken:
                        raise  # the wait is over
                    retry_after_us, front = busy.retry_after_us, True
                    continue
                queue.wake_first()  # this grant may have reclaimed more than one expired key
                return granted

    @property
    def listeners(self) -> int:
        """Listener tasks running: one per process with waiters here."""
        return len(self._listeners)

    async def aclose(self) -> None:
        """Stop every listener and answer every waiter 503: the replica is shutting down."""
        self._closed = True
        for queue in self._queues.values():
            queue.fail(SHUTTING_DOWN, for_good=True)
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
        self.waiting += 1
        try:
            yield queue
        finally:
            queue.members -= 1
            self.waiting -= 1
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
            # Signals no waiter here used may be for another replica's waiters: give them back
            # (RPUSH, as the scripts push them: a worker's ACL user has no LPUSH).
            with contextlib.suppress(StoreUnavailable), store_errors():
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(queue.freed, *queue.banked)
                    pipe.pexpire(queue.freed, SIGNAL_TTL_MS)
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


def _pool_size(redis: RedisClient) -> int:
    """How many connections the client may open (per node, on a cluster)."""
    if isinstance(redis, RedisCluster):
        return int(redis.connection_kwargs.get("max_connections", 64))
    return int(redis.connection_pool.max_connections)
