"""A held key as a context manager: renewed in the background, released on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING

from coordinator.errors import CoordinatorError, LeaseGone, UnknownLease
from coordinator.models import BatchKey

if TYPE_CHECKING:
    from coordinator.client.base import AsyncCoordinator

logger = logging.getLogger("coordinator.client")


class LeaseLost(LeaseGone):
    """The lease ended while the block still ran: another worker may now hold the key."""


class AsyncLease:
    """Holds one key of a process from `async with` to its end.

    Renews every third of the lease; leaving the block normally releases `completed`,
    leaving by an exception releases `failed`. If renewal finds the lease gone, `lost` turns
    true and `check()` (and leaving the block) raises LeaseLost: never silently.
    """

    def __init__(
        self,
        coordinator: AsyncCoordinator,
        name: str,
        machine: str,
        lease_seconds: int | None,
        wait_seconds: float,
    ) -> None:
        self._coordinator = coordinator
        self._request = (name, machine, lease_seconds, wait_seconds)
        self._key: BatchKey | None = None
        self._key_set_size = 0
        self._renewer: asyncio.Task[None] | None = None
        self._lost: CoordinatorError | None = None
        self._failed = False

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
        """Whether the lease ended before the block did."""
        return self._lost is not None

    def check(self) -> None:
        """Raise LeaseLost if the lease has ended; call it between units of work."""
        if self._lost is not None:
            raise LeaseLost(self.external_id) from self._lost

    def fail(self) -> None:
        """Release as `failed` when the block ends, without raising to say so."""
        self._failed = True

    def owns(self, row_id: int) -> bool:
        """Whether row `row_id` is this worker's to process."""
        return row_id % self.key_set_size == self.key

    def sql_predicate(self, column: str = "id") -> str:
        """A WHERE clause for this worker's slice (`column` is inserted as given)."""
        return f"{column} % {self.key_set_size} = {self.key}"

    async def __aenter__(self) -> AsyncLease:
        name, machine, lease_seconds, wait_seconds = self._request
        self._key = await self._coordinator.acquire(name, machine, lease_seconds, wait_seconds)
        try:
            self._key_set_size = (await self._coordinator.process(name)).key_set_size
        except BaseException:
            await self._coordinator.release(self.external_id, "failed")
            raise
        self._renewer = asyncio.create_task(self._renew_forever(), name=f"renew {name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        completed = exc_type is None and not self._failed
        try:
            await self._coordinator.release(
                self.external_id, "completed" if completed else "failed"
            )
        except (LeaseGone, UnknownLease) as error:
            self._lost = self._lost or error
        if completed:
            # The work finished, but not under a lease: someone must learn it did not count.
            self.check()

    async def _renew_forever(self) -> None:
        """Renew every third of the lease; on a transient failure retry sooner until expiry."""
        key = self.batch_key
        assert key.expires_us is not None
        assert key.started_us is not None
        length = (key.expires_us - key.started_us) / 1e6
        delay = length / 3
        while True:
            await asyncio.sleep(delay)
            try:
                self._key = await self._coordinator.renew(self.external_id)
                delay = length / 3
            except (LeaseGone, UnknownLease) as error:
                logger.warning("lease %s ended while held: %s", self.external_id, error)
                self._lost = error
                return
            except CoordinatorError as error:
                expires_us = self.batch_key.expires_us or 0
                if time.time() * 1e6 >= expires_us:
                    self._lost = error
                    return
                logger.warning("renewing %s failed, retrying: %s", self.external_id, error)
                delay = min(1.0, length / 10)
