"""The one client API both transports offer, and the lease built on it."""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from types import TracebackType

from coordinator.client.lease import AsyncLease
from coordinator.models import BatchKey, Event, Process


def default_machine() -> str:
    """The machine a lease is recorded for when none is named: this host's name, as in the CLI."""
    return socket.gethostname()


class AsyncCoordinator(ABC):
    """Register processes and lease their keys, over HTTP or directly on Redis."""

    @abstractmethod
    async def register(
        self, name: str, key_set_size: int | None = None, lease_seconds: int | None = None
    ) -> Process:
        """Register a process; raises ProcessExists if the name is taken."""

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

    @abstractmethod
    async def acquire(
        self,
        name: str,
        machine: str | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float = 0,
    ) -> BatchKey:
        """Lease the stalest free key, waiting up to `wait_seconds` for one to free.

        `machine` (recorded with the lease) defaults to this host's name.
        """

    @abstractmethod
    async def renew(self, external_id: str, lease_seconds: int | None = None) -> BatchKey:
        """Extend a live lease from now."""

    @abstractmethod
    async def release(self, external_id: str, outcome: str = "completed") -> BatchKey:
        """End a live lease as `completed` or `failed`."""

    @abstractmethod
    async def revoke(self, external_id: str) -> BatchKey:
        """End a lease now, as an administrator."""

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
