"""Batch runs: a process's passes, and its keys one at a time (read, retry).

A pass is one sweep over the key space (README "Batch runs"). Its counters live in the
process's `meta` and are kept by the scripts as keys are completed and quarantined; the last
100 finished passes stay readable in the `passes` hash. The Store mixes these operations in,
so the HTTP API and direct workers share them.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from coordinator import validation
from coordinator.errors import UnknownPass, UnknownProcess
from coordinator.models import BatchKey, Pass, Process, utc
from coordinator.scripts import raise_for_status
from coordinator.unavailable import store_errors

if TYPE_CHECKING:
    from coordinator.connection import RedisClient
    from coordinator.keys import KeySpace
    from coordinator.scripts import Scripts
    from coordinator.store import Limits
    from coordinator.waiters import Waiters

# A pass waiter blocks on the process's history in slices this long (inside socket timeouts).
PASS_WAIT_SLICE_SECONDS = 0.5
# Beyond this many blocking readers per store, pass waiters poll instead of holding a
# connection each, so waiting never starves the holders' renewals of the pool.
PASS_READERS = 8
PASS_POLL_SECONDS = 0.25


class BatchRuns:
    """The pass and single-key operations of the Store (mixed in)."""

    redis: RedisClient
    keys: KeySpace
    scripts: Scripts
    limits: Limits
    _pass_readers: asyncio.Semaphore
    waiters: Waiters

    async def process(self, name: str) -> Process:  # implemented by Store
        raise NotImplementedError

    async def batch_key(self, name: str, key: int) -> BatchKey:  # implemented by Store
        raise NotImplementedError

    async def retry_key(self, name: str, key: int) -> BatchKey:
        """Lift a key's quarantine and backoff and reset its attempts (admin); a key of a
        completed `once` pass reopens the pass until it is done or quarantined again."""
        name = validation.process_name(name)
        key = validation.key(key)
        if not 0 <= key <= validation.KEY_MAX:
            return await self.batch_key(name, key)  # UnknownProcess, else UnknownKey
        k = self.keys.process(name)
        with store_errors():
            reply = await self.scripts.call(
                "retry_key",
                k.of("retry_key"),
                [key, self.limits.events_cap],
            )
        raise_for_status(reply, process_name=name, key=key)
        return await self.batch_key(name, key)

    async def start_pass(self, name: str, after: int | None = None) -> Process:
        """Start the next pass now (admin): every key grantable again, attempts reset,
        quarantine and backoff lifted. Returns the process with its current pass.

        With `after`, the pass the caller expects to follow, a pass starts only if `after` is
        the current one, so a call sent again starts one pass, not two (see `follow_pass`).
        """
        process, _ = await self.follow_pass(name, after)
        return process

    async def follow_pass(self, name: str, after: int | None = None) -> tuple[Process, bool]:
        """Start the pass after `after` (None: after the current one) unless `after` was
        already followed; UnknownPass if it never started. Returns the process and whether
        this call started its pass."""
        name = validation.process_name(name)
        expected = None if after is None else validation.pass_number(after, "after")
        k = self.keys.process(name)
        with store_errors():
            reply = await self.scripts.call(
                "start_pass",
                k.of("start_pass"),
                [self.limits.events_cap, "" if expected is None else expected],
            )
        raise_for_status(reply, process_name=name, number=expected or 0)
        return await self.process(name), bool(reply[3])

    async def pass_info(self, name: str, number: int, wait_seconds: float = 0) -> Pass:
        """Pass `number` of a process; for the current pass, wait up to `wait_seconds` for it
        to complete (woken by the history's `pass-completed` entry, not by polling)."""
        name = validation.process_name(name)
        number = validation.pass_number(number)
        wait_seconds = validation.wait_seconds(wait_seconds)
        deadline = time.monotonic() + wait_seconds
        after = "$"
        while True:
            found, current, after = await self._read_pass(name, number)
            remaining = deadline - time.monotonic()
            if found.complete or not current or remaining <= 0:
                return found
            # A shutdown answers the wait at once (503) rather than at the slice's end.
            await self.waiters.unless_stopping(
                self._await_history(name, after, min(remaining, PASS_WAIT_SLICE_SECONDS))
            )

    async def _read_pass(self, name: str, number: int) -> tuple[Pass, bool, str]:
        """(the pass, whether it is the current one, the history's last entry id)."""
        k = self.keys.process(name)
        with store_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(k.meta, "size", "pass", "pass_started_us", "pass_completed_us")
                pipe.hmget(k.meta, "done", "created_us")
                pipe.zcount(k.parked, "+inf", "+inf")
                pipe.hget(k.passes, str(number))
                pipe.xrevrange(k.events, count=1)
                meta, counts, quarantined, kept, last = await pipe.execute()
        if not meta[0]:
            raise UnknownProcess(name)
        last_id = last[0][0] if last else "0-0"
        current = int(meta[1] or 1)
        if number == current:
            found = Pass(
                number,
                _utc(int(meta[2] or counts[1] or 0)),
                utc(int(meta[3])) if meta[3] else None,
                int(counts[0] or 0),
                int(quarantined),
            )
            return found, True, last_id
        if number > current or kept is None:
            raise UnknownPass(name, number)
        return _kept_pass(number, kept), False, last_id

    async def _await_history(self, name: str, after: str, seconds: float) -> None:
        """Until the process's history grows past `after`, or `seconds` pass. Past
        PASS_READERS blocked readers, poll instead of holding another connection."""
        if self._pass_readers.locked():
            await asyncio.sleep(min(seconds, PASS_POLL_SECONDS))
            return
        async with self._pass_readers:
            with store_errors():
                await self.redis.xread(
                    {self.keys.process(name).events: after}, count=1, block=int(seconds * 1000)
                )


def _kept_pass(number: int, kept: Any) -> Pass:  # noqa: ANN401 - a Redis reply
    """A finished pass as the `passes` hash keeps it: "started|completed|done|quarantined"."""
    started, completed, done, quarantined = str(kept).split("|")
    return Pass(number, _utc(int(started)), utc(int(completed)) if completed else None,
                int(done), int(quarantined))  # fmt: skip


def _utc(us: int) -> datetime:
    moment = utc(us)
    assert moment is not None
    return moment
