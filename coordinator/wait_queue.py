"""One process's waiting grants on this replica, in turn order, and what wakes them (see
`coordinator.waiters`, which runs the listeners and the grant loop around it)."""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from enum import Enum

from coordinator.errors import CoordinatorError, StoreUnavailable

# Wake a little after the earliest lease's expiry, not a little before it.
EXPIRY_MARGIN_SECONDS = 0.002


class Wake(Enum):
    """Why a waiter was woken, which says whether the waiter after it should look too."""

    # A release's signal: it freed one key, for this waiter alone.
    FREED = "freed"
    # An expiry or backoff due, or a waiter before it that got a key: maybe more are free.
    LOOK = "look"


class WaitQueue:
    """The grants of one process waiting on this replica, in turn order, and what wakes them."""

    def __init__(self, freed: str) -> None:
        self.freed = freed
        self.members = 0  # waiting for their turn, or trying the grant after it came
        # Signals popped while no member was waiting for its turn: the next turn takes one,
        # and the listener gives back those left when the last member goes.
        self.banked: list[str] = []
        self._turns: deque[asyncio.Future[Wake]] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self._closed_for: str | None = None

    def signal(self, freed_key: str) -> None:
        """A key was released: wake the first waiter, or keep the signal for the next one."""
        if not self.wake_first(Wake.FREED):
            self.banked.append(freed_key)

    def wake_first(self, why: Wake = Wake.LOOK) -> bool:
        """Wake the waiter at the front of the queue; False when none is waiting."""
        if not self._turns:
            return False
        self._turns.popleft().set_result(why)
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
        self.end(StoreUnavailable(detail))

    def end(self, error: CoordinatorError) -> int:
        """Answer every waiter waiting for its turn `error`; returns how many there were."""
        ended = len(self._turns)
        while self._turns:
            # One instance each: every waiter raises its own, with its own traceback.
            self._turns.popleft().set_exception(copy.copy(error))
        return ended

    def close(self) -> None:
        """The last member left."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def turn(self, deadline: float, *, front: bool) -> bool:
        """Wait until this waiter is woken (True) or `deadline`, in loop time, passes (False)."""
        return await self.woken(deadline, front=front) is not None

    async def woken(self, deadline: float, *, front: bool) -> Wake | None:
        """Wait until this waiter is woken (why) or `deadline`, in loop time, passes (None)."""
        if self._closed_for is not None:
            raise StoreUnavailable(self._closed_for)
        if self.banked:
            self.banked.pop()
            return Wake.FREED
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[Wake] = loop.create_future()
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
                # Woken, but its caller hung up: the next waiter goes instead.
                if turn.result() is Wake.FREED:
                    self.signal("")
                else:
                    self.wake_first()
            raise
        if not turn.done():
            self._turns.remove(turn)
            return None
        return turn.result()  # raises the failure the listener or shutdown set
