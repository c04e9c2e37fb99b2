"""Batch runs: a process's passes, and its keys one at a time (read, retry).

A pass is one sweep over the key space (README "Batch runs"). Its counters live in the
process's `meta` and are kept by the scripts as keys are completed and quarantined; the last
100 finished passes stay readable in the `passes` hash. The Store mixes these operations in,
so the HTTP API and direct workers share them.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from coordinator import validation
from coordinator.errors import StoreUnavailable, UnknownPass, UnknownProcess
from coordinator.models import BatchKey, Pass, Process, utc
from coordinator.scripts import Status, raise_for_status
from coordinator.unavailable import store_errors

if TYPE_CHECKING:
    from coordinator.connection import RedisClient
    from coordinator.keys import KeySpace
    from coordinator.pass_watch import PassWatch
    from coordinator.scripts import Scripts
    from coordinator.store import Limits
    from coordinator.waiters import Waiters


# start_pass.lua calls in a row that leave no fewer keys parked before a start gives up.
START_PASS_STALLED_CALLS = 8


class BatchRuns:
    """The pass and single-key operations of the Store (mixed in)."""

    redis: RedisClient
    keys: KeySpace
    scripts: Scripts
    limits: Limits
    pass_watch: PassWatch
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
                [self.limits.events_cap, "keys", key],
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
        args: list[str | int] = [self.limits.events_cap, "" if expected is None else expected]
        # The script lifts parked keys a chunk per call and starts the pass in the call that
        # finds few enough left, so no call holds Redis long whatever the quarantine's size.
        # Each call lifts more keys than a process can park between two calls, so `left`
        # falls; if it stops falling (keys parked as fast as they are lifted), the caller
        # gets a 503 and may send the same request again: nothing lifted is lost.
        least, stalled = None, 0
        while True:
            with store_errors():
                reply = await self.scripts.call("start_pass", k.of("start_pass"), args)
            if reply[0] != Status.MORE_PARKED:
                break
            left = int(reply[1])
            stalled = 0 if least is None or left < least else stalled + 1
            least = left if least is None else min(least, left)
            if stalled >= START_PASS_STALLED_CALLS:
                raise StoreUnavailable(
                    f"Process '{name}' parks keys as fast as the start of its pass lifts them"
                    f" ({left} parked); try again."
                )
        raise_for_status(reply, process_name=name, number=expected or 0)
        return await self.process(name), bool(reply[3])

    async def pass_info(
        self, name: str, number: int, wait_seconds: float = 0, *, holder: str = ""
    ) -> Pass:
        """Pass `number` of a process; for the current pass, wait up to `wait_seconds` for it
        to complete (woken by the history's `pass-completed` entry, not by polling).

        A wait counts among this replica's waiters, and among `holder`'s (the API passes its
        caller's token id): past either cap the pass is answered as it stands, at once.
        """
        name = validation.process_name(name)
        number = validation.pass_number(number)
        wait_seconds = validation.wait_seconds(wait_seconds)
        deadline = time.monotonic() + wait_seconds
        found, current, after = await self._read_pass(name, number)
        if found.complete or not current or wait_seconds <= 0:
            return found
        if not self.waiters.has_room(holder):
            return found
        events = self.keys.process(name).events
        with self.waiters.counted(holder):
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return found
                # A shutdown answers the wait at once (503) rather than at its end.
                await self.waiters.unless_stopping(
                    self.pass_watch.changed(events, after, remaining)
                )
                found, current, after = await self._read_pass(name, number)
                if found.complete or not current:
                    return found

    async def _read_pass(self, name: str, number: int) -> tuple[Pass, bool, str]:
        """(the pass, whether it is the current one, the history's last entry id)."""
        k = self.keys.process(name)
        with store_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(k.meta, "size", "pass", "pass_started_us", "pass_completed_us")
                pipe.hmget(k.meta, "done", "created_us", "failed")
                pipe.zcount(k.parked, "+inf", "+inf")
                pipe.hmget(k.passes, str(number), f"{number}:failed")
                pipe.xrevrange(k.events, count=1)
                meta, counts, quarantined, (kept, kept_failed), last = await pipe.execute()
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
                # `failed` names the pass that failed; this one only while it is complete.
                failed=bool(meta[3]) and counts[2] == (meta[1] or "1"),
            )
            return found, True, last_id
        if number > current or kept is None:
            raise UnknownPass(name, number)
        return _kept_pass(number, kept, failed=kept_failed is not None), False, last_id


def _kept_pass(number: int, kept: Any, *, failed: bool = False) -> Pass:  # noqa: ANN401 - a Redis reply
    """A finished pass as the `passes` hash keeps it: "started|completed|done|quarantined",
    and a field "<number>:failed" beside it when it failed (start_pass.lua)."""
    started, completed, done, quarantined = str(kept).split("|")
    return Pass(number, _utc(int(started)), utc(int(completed)) if completed else None,
                int(done), int(quarantined), failed)  # fmt: skip


def _utc(us: int) -> datetime:
    moment = utc(us)
    assert moment is not None
    return moment
