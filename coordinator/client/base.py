"""The one client API both transports offer, and the lease built on it."""

from __future__ import annotations

import logging
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from coordinator.client.lease import AsyncLease
from coordinator.client.outage import OutageLog, Retrying, outage_budget
from coordinator.errors import CoordinatorError, LeaseGone, StoreUnavailable
from coordinator.machine import default_machine
from coordinator.models import BatchKey, Event, Pass, Process, Redrive
from coordinator.progress import Progress
from coordinator.validation import UNSET, Unset

T = TypeVar("T")
logger = logging.getLogger("coordinator.client")


class AsyncCoordinator(ABC):
    """Register processes and lease their keys, over HTTP or directly on Redis.

    The calls a worker lives by (acquire, renew, release, process, pass_info) ride out an
    outage of the service: a transient failure (StoreUnavailable) is retried with backoff for
    up to the outage budget, then raises OutageTooLong. The others fail at once, so an
    operator's listing or change says straight away that the service is away.
    """

    def __init__(self, where: str, outage_budget_seconds: float | None = None) -> None:
        """`where` names the service in log lines ("the service at URL"); the budget is
        `outage_budget_seconds`, else COORDINATOR_OUTAGE_BUDGET_SECONDS, else 300 s."""
        self.outages = OutageLog(where, outage_budget(outage_budget_seconds))

    @abstractmethod
    async def register(
        self,
        name: str,
        key_set_size: int | None = None,
        lease_seconds: int | None = None,
        *,
        mode: str | None = None,
        max_attempts: int | None = None,
        retry_backoff_seconds: int | None = None,
        max_failed_keys: int | None = None,
    ) -> Process:
        """Register a process; raises ProcessExists if the name is taken.

        `mode` (`rotate` or `once`), `max_attempts`, `retry_backoff_seconds` and
        `max_failed_keys` (`once` only: more quarantined keys fail the pass) make it a batch
        run (README "Batch runs"); left out, the server's defaults apply.
        """

    @abstractmethod
    async def processes(self) -> list[Process]:
        """Every registered process, by name."""

    @abstractmethod
    def iter_processes(
        self, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[Process]:
        """Registered processes by name, starting with `prefix`, after the name `after`, at most
        `limit`: read page by page as they are consumed, never the whole list at once."""

    async def process(self, name: str) -> Process:
        """One registered process; raises UnknownProcess."""
        return await self._riding_outages(lambda: self._process(name))

    @abstractmethod
    async def _process(self, name: str) -> Process:
        """One request for a process."""

    async def progress(self, name: str) -> Progress:
        """The process's current pass: keys done, quarantined, in backoff and held, the recent
        rate, an ETA, and the first quarantined keys; raises UnknownProcess."""
        return await self._riding_outages(lambda: self._progress(name))

    @abstractmethod
    async def _progress(self, name: str) -> Progress:
        """One request for a process's progress."""

    @abstractmethod
    async def unregister(self, name: str) -> Process:
        """Delete a process, ending all of its leases."""

    @abstractmethod
    async def keys(self, name: str) -> list[BatchKey]:
        """The state of every key of a process."""

    @abstractmethod
    async def key(self, name: str, key: int) -> BatchKey:
        """One key of a process; raises UnknownProcess, or UnknownKey outside its keys."""

    @abstractmethod
    def iter_keys(
        self, name: str, after: int | None = None, limit: int | None = None
    ) -> AsyncIterator[BatchKey]:
        """The keys of a process in order, after key `after`, at most `limit`.

        Read page by page as they are consumed, so any number of keys can be listed without
        holding them all; raises UnknownProcess at the first page.
        """

    async def acquire(
        self,
        name: str,
        machine: str | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float = 0,
        request_id: str | None = None,
    ) -> BatchKey:
        """Lease the stalest free key, waiting up to `wait_seconds` for one to free.

        `machine` (recorded with the lease) defaults to HOST:PID, as in the CLI. The grant carries
        `request_id` (a new uuid4 when None); a transient failure is retried with the same
        id for the outage budget, so a grant whose answer was lost never takes two keys.
        """
        machine = default_machine() if machine is None else machine
        request_id = uuid.uuid4().hex if request_id is None else request_id
        deadline = time.monotonic() + wait_seconds
        retrying = Retrying(self.outages)
        while True:
            # A retry waits only for what is left of the caller's wait.
            left = max(0.0, deadline - time.monotonic()) if wait_seconds else 0
            try:
                key = await self._grant(name, machine, lease_seconds, left, request_id)
            except LeaseGone:
                if not retrying.retried:
                    raise
                # An earlier attempt was granted, its answer lost, and that lease is already
                # over (expired while we retried, say): it holds nothing, so ask anew.
                retrying.answered()
                logger.info("the lost grant %s had already ended; granting again", request_id)
                request_id = uuid.uuid4().hex
                continue
            except StoreUnavailable as error:
                await retrying.after(error)
                continue
            except CoordinatorError:  # a definite answer (no free key, say): the service is back
                retrying.answered()
                raise
            retrying.answered()
            return key

    @abstractmethod
    async def _grant(
        self,
        name: str,
        machine: str,
        lease_seconds: int | None,
        wait_seconds: float,
        request_id: str,
    ) -> BatchKey:
        """One grant request; `replayed` when it answered an earlier lease of `request_id`."""

    async def renew(
        self,
        external_id: str,
        lease_seconds: int | None = None,
        checkpoint: str | Unset | None = UNSET,
        *,
        retry: bool = True,
    ) -> BatchKey:
        """Extend a live lease from now; a `checkpoint` string is saved with the key for its
        next holder (None clears it, left out keeps it).

        Sending it twice is harmless, so a transient failure is retried for the outage budget;
        `retry=False` sends it once (a lease's renewer keeps its own schedule and deadline).
        """
        if not retry:
            return await self._renew(external_id, lease_seconds, checkpoint)
        return await self._riding_outages(
            lambda: self._renew(external_id, lease_seconds, checkpoint)
        )

    @abstractmethod
    async def _renew(
        self, external_id: str, lease_seconds: int | None, checkpoint: str | Unset | None
    ) -> BatchKey:
        """One renewal request."""

    async def release(
        self, external_id: str, outcome: str = "completed", *, retry: bool = True
    ) -> BatchKey | None:
        """End a live lease as `completed`, `failed`, `interrupted` or `fatal` (quarantined at
        once, whatever the retry budget); the key as released.

        Retried until answered (within the outage budget; `retry=False` sends it once). None
        when a retry finds the lease already ended: an earlier attempt, whose answer was
        lost, took effect (or the lease ran out meanwhile). LeaseGone if the first did.
        """
        if not retry:
            return await self._release(external_id, outcome)
        retrying = Retrying(self.outages)
        while True:
            try:
                key = await self._release(external_id, outcome)
            except LeaseGone:
                if not retrying.retried:
                    raise
                retrying.answered()
                logger.info(
                    "lease %s had ended when its release was retried: an earlier attempt"
                    " took effect, or the lease ran out meanwhile",
                    external_id,
                )
                return None
            except StoreUnavailable as error:
                await retrying.after(error)
                continue
            except CoordinatorError:  # a definite answer (not the holder, say): the service is back
                retrying.answered()
                raise
            retrying.answered()
            return key

    @abstractmethod
    async def _release(self, external_id: str, outcome: str) -> BatchKey:
        """One release request."""

    @abstractmethod
    async def revoke(self, external_id: str) -> BatchKey:
        """End a lease now, as an administrator."""

    async def start_pass(self, name: str, after: int | None = None) -> Process:
        """Start the next pass now (admin); returns the process with its new pass.

        With `after`, the pass the caller expects to follow, a pass starts only if `after` is
        still the current one; if it was already followed, nothing starts and the process is
        returned in its current pass. So it is safe to send again, and a transient failure is
        retried for the outage budget: a start whose answer was lost starts one pass, not two.
        Without `after` it is sent once.
        """
        if after is None:
            return await self._start_pass(name, None)
        return await self._riding_outages(lambda: self._start_pass(name, after))

    @abstractmethod
    async def _start_pass(self, name: str, after: int | None) -> Process:
        """One request to start the next pass."""

    async def pass_info(self, name: str, number: int, wait_seconds: int = 0) -> Pass:
        """Pass `number`; for the current pass, wait up to `wait_seconds` (0-60) for it to
        complete. Raises UnknownPass for a pass never started or forgotten.

        A retried wait waits only for what is left of `wait_seconds`.
        """
        deadline = time.monotonic() + wait_seconds
        return await self._riding_outages(
            lambda: self._pass_info(name, number, max(0, math.ceil(deadline - time.monotonic())))
        )

    @abstractmethod
    async def _pass_info(self, name: str, number: int, wait_seconds: int) -> Pass:
        """One request for a pass."""

    @abstractmethod
    async def retry_key(self, name: str, key: int) -> BatchKey:
        """Lift a key's quarantine and backoff and reset its attempts (admin)."""

    @abstractmethod
    async def retry_keys(self, name: str, keys: list[int]) -> Redrive:
        """Retry each of `keys` as `retry_key` does, all or none (admin)."""

    @abstractmethod
    async def retry_quarantined(self, name: str) -> Redrive:
        """Retry every quarantined key of the process (admin), a chunk at a time."""

    @abstractmethod
    async def purge_history(self, name: str) -> None:
        """Forget a deleted process's history now (admin), rather than when it expires."""

    @abstractmethod
    async def events(self, name: str, after: str = "-", limit: int = 100) -> list[Event]:
        """The process's history after event id `after`, oldest first."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close connections."""

    async def _riding_outages(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, sent again after each transient failure until the outage budget is spent."""
        retrying = Retrying(self.outages)
        while True:
            try:
                result = await call()
            except StoreUnavailable as error:
                await retrying.after(error)
                continue
            except CoordinatorError:  # a definite answer: the service is back
                retrying.answered()
                raise
            retrying.answered()
            return result

    def lease(
        self,
        name: str,
        machine: str | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float = 0,
    ) -> AsyncLease:
        """`async with coordinator.lease(...) as lease:` holds a key, renewing it meanwhile.

        `machine` defaults to HOST:PID (this host's name and process id).
        """
        machine = default_machine() if machine is None else machine
        return AsyncLease(self, name, machine, lease_seconds, wait_seconds)

    async def __aenter__(self) -> AsyncCoordinator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
