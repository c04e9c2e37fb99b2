"""The one client API both transports offer, and the lease built on it."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from types import TracebackType

from coordinator.client.lease import AsyncLease
from coordinator.errors import StoreUnavailable
from coordinator.models import BatchKey, Event, Pass, Process
from coordinator.validation import UNSET, Unset

# A grant that failed transiently (its answer may have been lost) is sent again with the same
# request_id this many times, after 0.1 s, 0.2 s, 0.4 s: the server answers the lease it
# already granted, if any, rather than a second key.
ACQUIRE_RETRIES = 3
ACQUIRE_RETRY_FIRST_SECONDS = 0.1


def default_machine() -> str:
    """The machine a lease is recorded for when none is named: this host's name, as in the CLI."""
    return socket.gethostname()


class AsyncCoordinator(ABC):
    """Register processes and lease their keys, over HTTP or directly on Redis."""

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
    ) -> Process:
        """Register a process; raises ProcessExists if the name is taken.

        `mode` (`rotate` or `once`), `max_attempts` and `retry_backoff_seconds` make it a batch
        run (README "Batch runs"); left out, the server's defaults apply.
        """

    @abstractmethod
    async def processes(self) -> list[Process]:
        """Every registered process, by name."""

    @abstractmethod
    async def process(self, name: str) -> Process:
        """One registered process; raises UnknownProcess."""

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

        `machine` (recorded with the lease) defaults to this host's name. The grant carries
        `request_id` (a new uuid4 when None); a transient failure (StoreUnavailable) is retried
        with the same id a few times, so a grant whose answer was lost never takes two keys.
        """
        machine = default_machine() if machine is None else machine
        request_id = uuid.uuid4().hex if request_id is None else request_id
        deadline = time.monotonic() + wait_seconds
        for retry in range(ACQUIRE_RETRIES + 1):
            # A retry waits only for what is left of the caller's wait.
            left = max(0.0, deadline - time.monotonic()) if wait_seconds else 0
            try:
                return await self._grant(name, machine, lease_seconds, left, request_id)
            except StoreUnavailable:
                if retry == ACQUIRE_RETRIES:
                    raise
            await asyncio.sleep(ACQUIRE_RETRY_FIRST_SECONDS * 2**retry)
        raise AssertionError("unreachable: the last retry returns or raises")

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

    @abstractmethod
    async def renew(
        self,
        external_id: str,
        lease_seconds: int | None = None,
        checkpoint: str | Unset | None = UNSET,
    ) -> BatchKey:
        """Extend a live lease from now; a `checkpoint` string is saved with the key for its
        next holder (None clears it, left out keeps it)."""

    @abstractmethod
    async def release(self, external_id: str, outcome: str = "completed") -> BatchKey:
        """End a live lease as `completed` or `failed`."""

    @abstractmethod
    async def revoke(self, external_id: str) -> BatchKey:
        """End a lease now, as an administrator."""

    @abstractmethod
    async def start_pass(self, name: str) -> Process:
        """Start the next pass now (admin); returns the process with its new pass."""

    @abstractmethod
    async def pass_info(self, name: str, number: int, wait_seconds: int = 0) -> Pass:
        """Pass `number`; for the current pass, wait up to `wait_seconds` (0-60) for it to
        complete. Raises UnknownPass for a pass never started or forgotten."""

    @abstractmethod
    async def retry_key(self, name: str, key: int) -> BatchKey:
        """Lift a key's quarantine and backoff and reset its attempts (admin)."""

    @abstractmethod
    async def purge_history(self, name: str) -> None:
        """Forget a deleted process's history now (admin), rather than when it expires."""

    @abstractmethod
    async def events(self, name: str, after: str = "-", limit: int = 100) -> list[Event]:
        """The process's history after event id `after`, oldest first."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close connections."""

    def lease(
        self,
        name: str,
        machine: str | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float = 0,
    ) -> AsyncLease:
        """`async with coordinator.lease(...) as lease:` holds a key, renewing it meanwhile.

        `machine` defaults to this host's name.
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
