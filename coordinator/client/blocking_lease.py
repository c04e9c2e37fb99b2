"""The blocking lease: what `with coordinator.lease(...) as lease:` holds in a blocking client.

It is the async lease (coordinator.client.lease) seen from the caller's thread: its renewals
run on the client's event-loop thread, and the one call that talks to the service,
`checkpoint()`, blocks until that thread has sent it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol, TypeVar

from coordinator.client.lease import AsyncLease
from coordinator.models import BatchKey

T = TypeVar("T")
logger = logging.getLogger("coordinator.client")


class Portal(Protocol):
    """Runs a coroutine on the client's event-loop thread and returns its result."""

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T: ...


class Lease:
    """A held key, renewed in the background until the `with` block ends."""

    def __init__(self, portal: Portal, lease: AsyncLease) -> None:
        self._portal = portal
        self.async_lease = lease
        """The same lease for async code that shares the client's loop."""

    def __repr__(self) -> str:
        return repr(self.async_lease)

    @property
    def batch_key(self) -> BatchKey:
        """The key as the last grant or renewal returned it."""
        return self.async_lease.batch_key

    @property
    def key(self) -> int:
        """The key's number, 0 to key_set_size - 1."""
        return self.async_lease.key

    @property
    def key_set_size(self) -> int:
        """How many keys the process has."""
        return self.async_lease.key_set_size

    @property
    def fencing_token(self) -> int:
        """Pass this to the store you write to; it rejects writes older than one it has seen."""
        return self.async_lease.fencing_token

    @property
    def external_id(self) -> str:
        """The lease's id."""
        return self.async_lease.external_id

    @property
    def previous_checkpoint(self) -> str | None:
        """The checkpoint the key's last holder saved (from the grant): where to resume."""
        return self.async_lease.previous_checkpoint

    @property
    def released_as(self) -> BatchKey | None:
        """The key as its release answered, once the block has ended (see AsyncLease)."""
        return self.async_lease.released_as

    @property
    def lost(self) -> bool:
        """Whether the lease ended, or passed its local deadline unrenewed, before the block did."""
        return self.async_lease.lost

    def checkpoint(self, value: str | None) -> None:
        """Save `value` with the key now, for the key's next holder should this one stop before
        completing (None clears it); returns once saved. Raises LeaseLost if the lease ended."""
        self._portal.call(self.async_lease.checkpoint(value))

    def save_checkpoints_from(self, source: Callable[[], str | None]) -> None:
        """Send `source()` as the checkpoint with every renewal, and once more on leaving the
        block other than completed (a completed release clears it); None sends nothing.
        `source` is called on the client's thread."""
        self.async_lease.save_checkpoints_from(source)

    def check(self) -> None:
        """Raise LeaseLost if the lease has ended; call it between units of work."""
        self.async_lease.check()

    def fail(self, *, fatal: bool = False) -> None:
        """Release as `failed` when the block ends, without raising to say so; `fatal` (the
        work can never succeed as it is) quarantines the key at once, whatever its budget."""
        self.async_lease.fail(fatal=fatal)

    def interrupt(self) -> None:
        """Release as `interrupted` when the block ends: no attempt counted, checkpoint kept."""
        self.async_lease.interrupt()

    def owns(self, row_id: int) -> bool:
        """Whether row `row_id` is this worker's to process."""
        return self.async_lease.owns(row_id)

    def sql_predicate(self, column: str = "id") -> str:
        """A WHERE clause for this worker's slice (`column` is inserted as given)."""
        return self.async_lease.sql_predicate(column)


class LeaseContext:
    """`with coordinator.lease(...) as lease:`; `lease` is the held Lease."""

    def __init__(self, portal: Portal, lease: AsyncLease) -> None:
        self._portal = portal
        self._lease = lease

    def __repr__(self) -> str:
        return repr(self._lease)

    def __enter__(self) -> Lease:
        self._call_to_release(self._lease.__aenter__())
        return Lease(self._portal, self._lease)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._call_to_release(self._lease.__aexit__(exc_type, exc, tb))

    def _call_to_release(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a step of the lease; a Ctrl-C meanwhile cuts it short, but a release it began
        is still waited for (a second Ctrl-C leaves it to the lease's expiry)."""
        try:
            self._portal.call(coroutine)
        except KeyboardInterrupt:
            if self._lease.releasing:
                logger.warning("releasing the lease before stopping; Ctrl-C again not to wait")
                self._portal.call(self._lease.released())
            raise
