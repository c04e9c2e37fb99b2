"""The client that runs the service's own Lua scripts on Redis, with no API in between."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from coordinator import extras
from coordinator.client.base import AsyncCoordinator
from coordinator.client.outage import without_credentials
from coordinator.config import Settings
from coordinator.models import BatchKey, Event, Pass, Process, Redrive
from coordinator.progress import Progress
from coordinator.validation import Unset

if TYPE_CHECKING:  # redis comes with the [direct] extra: imported when a client is made
    from coordinator.store import Limits, Store


class AsyncRedisCoordinator(AsyncCoordinator):
    """A trusted worker's client: the same `Store` the HTTP API runs, on `redis_url`."""

    def __init__(
        self,
        redis_url: str,
        prefix: str = "bpc",
        limits: Limits | None = None,
        outage_budget_seconds: float | None = None,
    ) -> None:
        """`outage_budget_seconds`: how long a worker's call rides out an outage (README)."""
        super().__init__(f"Redis at {without_credentials(redis_url)}", outage_budget_seconds)
        extras.require(
            "direct", "Working on Redis directly (--redis-url, --direct, RedisCoordinator)"
        )
        from coordinator.connection import connect  # noqa: PLC0415 - needs the extra
        from coordinator.store import Store  # noqa: PLC0415 - needs the extra

        self._redis = connect(redis_url, Settings())
        self.store: Store = Store(self._redis, prefix=prefix, limits=limits)

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
        """Register a process; raises ProcessExists if the name is taken."""
        return await self.store.register(
            name, key_set_size, lease_seconds, mode=mode, max_attempts=max_attempts,
            retry_backoff_seconds=retry_backoff_seconds, max_failed_keys=max_failed_keys,
        )  # fmt: skip

    async def processes(self) -> list[Process]:
        """Every registered process, by name."""
        return await self.store.processes()

    async def iter_processes(
        self, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[Process]:
        """Registered processes by name, read from the registry in chunks."""
        async for chunk in self.store.process_chunks(prefix, after, limit):
            for process in chunk:
                yield process

    async def _process(self, name: str) -> Process:
        """One registered process; raises UnknownProcess."""
        return await self.store.process(name)

    async def _progress(self, name: str) -> Progress:
        """The process's progress, read as the API reads it; raises UnknownProcess."""
        from coordinator.progress_read import read_progress  # noqa: PLC0415 - needs the extra

        return await read_progress(self.store.redis, self.store.keys, name)

    async def unregister(self, name: str) -> Process:
        """Delete a process, ending all of its leases."""
        return await self.store.unregister(name)

    async def keys(self, name: str) -> list[BatchKey]:
        """The state of every key of a process."""
        return await self.store.batch_keys(name)

    async def key(self, name: str, key: int) -> BatchKey:
        """One key of a process; raises UnknownProcess, or UnknownKey outside its keys."""
        return await self.store.batch_key(name, key)

    async def iter_keys(
        self, name: str, after: int | None = None, limit: int | None = None
    ) -> AsyncIterator[BatchKey]:
        """The keys of a process in order, after key `after`, at most `limit`, read in chunks."""
        first = 0 if after is None else after + 1
        async for key in self.store.iter_batch_keys(name, first, limit):
            yield key

    async def _grant(
        self,
        name: str,
        machine: str,
        lease_seconds: int | None,
        wait_seconds: float,
        request_id: str,
    ) -> BatchKey:
        """One grant by the store; `replayed` when it answered an earlier lease of `request_id`."""
        return await self.store.grant(
            name, machine, lease_seconds, wait_seconds, request_id=request_id
        )

    async def _renew(
        self, external_id: str, lease_seconds: int | None, checkpoint: str | Unset | None
    ) -> BatchKey:
        """One renewal by the store, saving `checkpoint` unless left out."""
        return await self.store.renew(external_id, lease_seconds, checkpoint=checkpoint)

    async def _start_pass(self, name: str, after: int | None) -> Process:
        """One request to start the next pass, if `after` (when given) is still the current
        one; returns the process in its current pass."""
        return await self.store.start_pass(name, after)

    async def _pass_info(self, name: str, number: int, wait_seconds: int) -> Pass:
        """Pass `number`, waiting up to `wait_seconds` for the current one to complete."""
        return await self.store.pass_info(name, number, wait_seconds)

    async def retry_key(self, name: str, key: int) -> BatchKey:
        """Lift a key's quarantine and backoff and reset its attempts (admin)."""
        return await self.store.retry_key(name, key)

    async def retry_keys(self, name: str, keys: list[int]) -> Redrive:
        """Retry each of `keys` as `retry_key` does, all or none (admin)."""
        return await self.store.retry_keys(name, keys)

    async def retry_quarantined(self, name: str) -> Redrive:
        """Retry every quarantined key of the process (admin), a chunk at a time."""
        return await self.store.retry_quarantined(name)

    async def _release(self, external_id: str, outcome: str) -> BatchKey:
        """One release by the store."""
        return await self.store.release(external_id, outcome)

    async def revoke(self, external_id: str) -> BatchKey:
        """End a lease now, as an administrator."""
        return await self.store.revoke(external_id)

    async def purge_history(self, name: str) -> None:
        """Forget a deleted process's history now (admin), rather than when it expires."""
        await self.store.purge_history(name)

    async def events(self, name: str, after: str = "-", limit: int = 100) -> list[Event]:
        """The process's history after event id `after`, oldest first."""
        return await self.store.events(name, after, limit)

    async def aclose(self) -> None:
        """End the store's waiting listeners, then close the connection pool."""
        await self.store.aclose()
        await self._redis.aclose()
