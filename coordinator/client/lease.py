"""A held key as a context manager: renewed in the background, released on the way out.

The lease is believed held only until a deadline on this machine's monotonic clock: the
instant its last successful grant or renewal was *sent*, plus the lease's length, minus a
safety margin. The server counts the lease from a moment after that send, so the deadline
falls before the server's expiry whatever the round trip, and never depends on wall time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from coordinator.client.lease_exit import (
    LeaseReleaser,
    outcome_on_leaving,
    release_on_leaving,
    release_quietly,
    unless_cancelled,
)
from coordinator.errors import LeaseGone, UnknownLease
from coordinator.lease_margin import safety_margin
from coordinator.models import BatchKey, Process, timestamp
from coordinator.validation import UNSET, Unset

logger = logging.getLogger("coordinator.client")

# A failed renewal is retried after 0.1 s, doubling up to a tenth of the lease (at most 1 s).
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 1.0


class LeaseLost(LeaseGone):
    """The lease ended while the block still ran: another worker may now hold the key."""


class RenewalsFailed(TimeoutError):
    """No renewal succeeded before the lease's local deadline (the cause of a LeaseLost)."""


class LeaseService(LeaseReleaser, Protocol):
    """What a lease needs of its client (AsyncCoordinator offers it)."""

    async def acquire(
        self, name: str, machine: str | None, lease_seconds: int | None, wait_seconds: float
    ) -> BatchKey: ...

    async def process(self, name: str) -> Process: ...

    async def renew(
        self,
        external_id: str,
        lease_seconds: int | None = None,
        checkpoint: str | Unset | None = UNSET,
        *,
        retry: bool = True,
    ) -> BatchKey: ...


class AsyncLease:
    """Holds one key of a process from `async with` to its end.

    Renews every third of the lease. Leaving the block normally releases `completed`; by an
    exception, or after `fail()`, `failed`; by KeyboardInterrupt, SystemExit, task
    cancellation, or after `interrupt()`, `interrupted`. The release is sent even if the task
    is cancelled meanwhile, and rides out an outage (the client's budget). If renewal finds
    the lease gone, or no renewal succeeds before the lease's local deadline, `lost` turns
    true and `check()` (and leaving the block) raises LeaseLost: never silently.
    """

    def __init__(
        self,
        coordinator: LeaseService,
        name: str,
        machine: str,
        lease_seconds: int | None,
        wait_seconds: float,
    ) -> None:
        self._coordinator = coordinator
        self._request = (name, machine, lease_seconds, wait_seconds)
        self._key: BatchKey | None = None
        self._previous_checkpoint: str | None = None  # as the grant found it
        self._checkpoint_source: Callable[[], str | None] | None = None
        self._key_set_size = 0
        self._renewer: asyncio.Task[None] | None = None
        self._failed = False
        self._fatal = False
        self._interrupted = False
        self._leaving: asyncio.Future[None] | None = None  # the release, once the block ends
        self._length = 0.0  # seconds, as granted; every renewal asks for the same
        self._renewed_at = 0.0  # monotonic instant the last successful request was sent
        # The blocking client reads `lost` on the caller's thread while the renewer, on the
        # client's event-loop thread, moves the deadline: the lock keeps `lost` from flipping
        # back once it has been seen true.
        self._lock = threading.Lock()
        self._held_until = math.inf  # monotonic deadline; infinite while not held
        self._ended: BaseException | None = None
        self._last_failure: BaseException | None = None
        self._left = False  # the block is over and the lease released (or left to expire)
        self._released: BatchKey | None = None  # the key as its release answered

    def __repr__(self) -> str:
        """`<Lease nightly key 3/10 token 41 expires 2026-11-27T06:47:07.046923Z>`."""
        name = self._request[0]
        key = self._key
        if key is None:
            return f"<Lease {name} not held>"
        if self._left:
            state = "ended"
        elif self.lost:
            state = "lost"
        else:
            state = f"expires {timestamp(key.expires_at)}"
        held = f"key {key.key}/{self._key_set_size} token {key.fencing_token}"
        return f"<Lease {name} {held} {state}>"

    @property
    def batch_key(self) -> BatchKey:
        """The key as last granted or renewed."""
        if self._key is None:
            raise RuntimeError("the lease is not held: use it inside `with`")
        return self._key

    @property
    def key(self) -> int:
        """The key number: work on the rows where id % key_set_size == key."""
        return self.batch_key.key

    @property
    def previous_checkpoint(self) -> str | None:
        """The checkpoint the key's last holder saved (from the grant): where to resume."""
        return self._previous_checkpoint

    async def checkpoint(self, value: str | None) -> None:
        """Save `value` with the key now, by an immediate renewal, for the key's next holder
        should this one stop before completing (None clears it). Raises LeaseLost if the
        lease has ended."""
        self.check()
        try:
            await self._renew(value, ride_outage=True)
        except (LeaseGone, UnknownLease) as error:
            self._end(error)
            raise LeaseLost(self.external_id) from error
        except TimeoutError as error:  # the outage outlasted the lease: it is lost
            self.check()
            raise LeaseLost(self.external_id) from error

    def save_checkpoints_from(self, source: Callable[[], str | None]) -> None:
        """Send `source()` as the checkpoint with every renewal, and once more on leaving the
        block other than completed (a completed release clears it); None sends nothing."""
        self._checkpoint_source = source

    @property
    def key_set_size(self) -> int:
        """How many keys the process has."""
        return self._key_set_size

    @property
    def fencing_token(self) -> int:
        """Pass this to the store you write to; it rejects writes older than one it has seen."""
        token = self.batch_key.fencing_token
        assert token is not None
        return token

    @property
    def external_id(self) -> str:
        """The lease's id."""
        external_id = self.batch_key.external_id
        assert external_id is not None
        return external_id

    @property
    def lost(self) -> bool:
        """Whether the lease ended, or passed its local deadline unrenewed, before the block did."""
        return self._ended_by() is not None

    def check(self) -> None:
        """Raise LeaseLost if the lease has ended; call it between units of work."""
        ended = self._ended_by()
        if ended is not None:
            raise LeaseLost(self.external_id) from ended

    def fail(self, *, fatal: bool = False) -> None:
        """Release as `failed` when the block ends, without raising to say so; `fatal` (the
        work can never succeed as it is) quarantines the key at once, whatever its budget."""
        self._failed = True
        self._fatal = self._fatal or fatal

    def interrupt(self) -> None:
        """Release as `interrupted` when the block ends (the work was stopped, not failed:
        no attempt is counted and the checkpoint is kept), however the block ends."""
        self._interrupted = True

    def owns(self, row_id: int) -> bool:
        """Whether row `row_id` is this worker's to process."""
        return row_id % self.key_set_size == self.key

    def sql_predicate(self, column: str = "id") -> str:
        """A WHERE clause for this worker's slice (`column` is inserted as given)."""
        return f"{column} % {self.key_set_size} = {self.key}"

    async def __aenter__(self) -> AsyncLease:
        name, machine, lease_seconds, wait_seconds = self._request
        sent = time.monotonic()
        key = await self._coordinator.acquire(name, machine, lease_seconds, wait_seconds)
        assert key.expires_at is not None
        assert key.started_at is not None
        self._key = key
        self._previous_checkpoint = key.checkpoint
        self._length = (key.expires_at - key.started_at).total_seconds()
        try:
            self._key_set_size = (await self._coordinator.process(name)).key_set_size
        except BaseException:
            # No work was done on the key: it goes back where it was, at no attempt's cost.
            leaving = release_quietly(self._coordinator, self.external_id, "interrupted")
            self._leaving = asyncio.ensure_future(leaving)
            await unless_cancelled(self._leaving)
            raise
        # The deadline is still unset (infinite), so a renewal here sets it from its own send.
        renewed = False
        if time.monotonic() - sent >= self._length / 3:
            # The grant waited for a key: counted from its request, little of the lease (or
            # none) may be left on this clock. Renewing now counts from a later instant.
            renewed = await self._renew_or_note_failure() is True
        if not renewed:
            self._believe(sent, key)
        if not self.lost:
            self._renewer = asyncio.create_task(self._renew_forever(), name=f"renew {name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome = outcome_on_leaving(
            exc_type, failed=self._failed, interrupted=self._interrupted, fatal=self._fatal
        )
        self._leaving = asyncio.ensure_future(self._leave(outcome))
        await unless_cancelled(self._leaving)

    @property
    def releasing(self) -> bool:
        """Whether a release begun on leaving the block is still under way."""
        return self._leaving is not None and not self._leaving.done()

    async def released(self) -> None:
        """Wait for the release started on leaving the block (after an interruption cut the
        wait for it short); its errors were the block's to raise, so none are raised here."""
        if self._leaving is not None:
            await asyncio.wait([self._leaving])

    async def _leave(self, outcome: str) -> None:
        """Stop renewing, save the last checkpoint unless completed, release as `outcome`."""
        if self._renewer is not None:
            self._renewer.cancel()
            # wait() neither raises the renewer's CancelledError nor swallows our own.
            await asyncio.wait([self._renewer])
        lost = self.lost
        finished = outcome == "completed"
        if finished and lost:  # work done after the lease stopped being believed held
            outcome = "failed"
        if outcome != "completed" and not lost:
            await self._save_last_checkpoint()
        with self._lock:
            deadline, self._held_until = self._held_until, math.inf  # what it saw is final
        self._left = True
        ended = await release_on_leaving(
            self._coordinator,
            self.external_id,
            outcome,
            lost=lost,
            deadline=deadline,
            on_released=self._note_released,
        )
        if ended is not None:
            self._end(ended)
        if finished:
            # The work finished, but not under a lease: someone must learn it did not count.
            self.check()

    def _note_released(self, key: BatchKey) -> None:
        self._released = key

    @property
    def released_as(self) -> BatchKey | None:
        """The key as its release answered (its attempts, state, retry_at), once the block
        has ended; None before, or when the release found the lease already ended."""
        return self._released

    async def _save_last_checkpoint(self) -> None:
        """Before a release that keeps it, save the source's checkpoint one last time."""
        if self._checkpoint_source is None or self._checkpoint() is UNSET:
            return
        try:
            await self._renew(ride_outage=True)
        except Exception as error:  # noqa: BLE001 - the release follows whatever happens; the last renewal's checkpoint stays
            logger.warning("saving the checkpoint of lease %s failed: %r", self.external_id, error)

    def _checkpoint(self) -> str | Unset:
        """What the next renewal sends as the checkpoint: the source's, else nothing."""
        value = None if self._checkpoint_source is None else self._checkpoint_source()
        return UNSET if value is None else value

    async def _renew_forever(self) -> None:
        """Renew every third of the lease; after a failure retry sooner, until the deadline."""
        retry_max = min(RETRY_MAX_SECONDS, self._length / 10)
        failures = 0
        while True:
            if failures:
                wake = time.monotonic() + min(RETRY_FIRST_SECONDS * 2 ** (failures - 1), retry_max)
            else:
                wake = self._renewed_at + self._length / 3
            await asyncio.sleep(max(0.0, min(wake, self._held_until) - time.monotonic()))
            if self.lost:
                logger.warning(
                    "lease %s was not renewed before its deadline: %s",
                    self.external_id,
                    self._ended_by(),
                )
                return
            renewed = await self._renew_or_note_failure(failures)
            if renewed is None:
                return
            failures = 0 if renewed else failures + 1

    async def _renew_or_note_failure(self, failures: int = 0) -> bool | None:
        """Renew once: True if renewed, False if it failed (retry), None if the lease ended."""
        try:
            await self._renew()
        except (LeaseGone, UnknownLease) as error:
            logger.warning("lease %s ended while held: %s", self.external_id, error)
            self._end(error)
            return None
        except Exception as error:  # noqa: BLE001 - any failure (an error reply, the network, a 5xx) is retried until the deadline; CancelledError is no Exception and ends the task
            with self._lock:
                self._last_failure = error
            level = logging.DEBUG if failures else logging.WARNING
            logger.log(level, "renewing lease %s failed, retrying until its deadline: %r",
                       self.external_id, error)  # fmt: skip
            return False
        return True

    async def _renew(
        self, checkpoint: str | Unset | None = UNSET, *, ride_outage: bool = False
    ) -> None:
        """A renewal (with the source's checkpoint unless given), abandoned at the deadline:
        a reply after it could not save the lease. `ride_outage` retries transient failures
        within it; else one request (the renewer retries on its own, sooner)."""
        length = self._length
        whole = int(length) if length.is_integer() and length >= 1 else None
        sent = time.monotonic()
        left = self._held_until - sent  # infinite on entering: then the client's own timeout
        if isinstance(checkpoint, Unset):
            checkpoint = self._checkpoint()
        async with asyncio.timeout(None if math.isinf(left) else max(0.0, left)):
            # Asking for the granted length, so the reply's expiry is known to be that length
            # from a moment after `sent` (None keeps the lease's own length, assumed the same).
            key = await self._coordinator.renew(
                self.external_id, whole, checkpoint=checkpoint, retry=ride_outage
            )
        self._believe(sent, key)

    def _believe(self, sent: float, key: BatchKey) -> None:
        """Take a grant or renewal sent at `sent` as the lease's state, unless already lost."""
        with self._lock:
            if self._ended is None and time.monotonic() < self._held_until:
                self._key = key
                self._renewed_at = sent
                self._held_until = sent + self._length - safety_margin(self._length)

    def _end(self, error: BaseException) -> None:
        with self._lock:
            self._ended = self._ended or error

    def _ended_by(self) -> BaseException | None:
        """Why the lease is lost, or None; passing the deadline is noted once and for good."""
        with self._lock:
            if self._ended is None and time.monotonic() >= self._held_until:
                failure = self._last_failure
                believed = self._length - safety_margin(self._length)
                self._ended = RenewalsFailed(
                    f"no renewal succeeded within {believed:.1f} s of the last one sent"
                    + (f"; the last failed with {failure!r}" if failure else "")
                )
                self._ended.__cause__ = failure
            return self._ended
