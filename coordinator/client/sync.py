"""Blocking clients: the async clients run on a private event-loop thread.

One implementation serves both styles; the lease's renewal task runs on that thread too,
so it keeps renewing while the caller's thread is busy with the work.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
)
from types import TracebackType
from typing import Any, TypeVar, cast

from coordinator.client.base import AsyncCoordinator
from coordinator.client.blocking_lease import LeaseContext
from coordinator.client.direct import AsyncRedisCoordinator
from coordinator.client.http import AsyncHttpCoordinator
from coordinator.locate import locate
from coordinator.models import BatchKey, Event, Pass, Process, Redrive
from coordinator.progress import Progress
from coordinator.validation import UNSET, Unset

T = TypeVar("T")
ITER_CHUNK = 1000  # items iter_keys and iter_processes fetch per call into the client's thread


class _Portal:
    """An event loop on a daemon thread that runs coroutines for blocking callers."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="coordinator-client", daemon=True
        )
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(_outcome(coroutine), self._loop)
        try:
            result, error = future.result()
        except KeyboardInterrupt:  # Ctrl-C while waiting: end the call too, not just the wait
            future.cancel()
            raise
        if error is not None:
            raise error
        return cast("T", result)  # None only with an error, raised above

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _outcome(coroutine: Coroutine[Any, Any, T]) -> tuple[T | None, Exception | None]:
    """The call's result or its exception, as a value: a call given up on (Ctrl-C) may still
    fail after, and its failure must not be logged as "never retrieved"."""
    try:
        return await coroutine, None
    except Exception as error:  # noqa: BLE001 - handed to the caller's thread, raised there
        return None, error


class Coordinator:
    """The blocking client: every method of AsyncCoordinator, without `await`."""

    def __init__(self, make: Callable[[], AsyncCoordinator]) -> None:
        self._portal = _Portal()

        async def build() -> AsyncCoordinator:
            return make()  # inside the loop, so the client binds to it

        self.async_client = self._portal.call(build())

    def register(
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

        `mode`, `max_attempts`, `retry_backoff_seconds` and `max_failed_keys` make it a batch
        run.
        """
        return self._run(
            self.async_client.register(
                name, key_set_size, lease_seconds, mode=mode, max_attempts=max_attempts,
                retry_backoff_seconds=retry_backoff_seconds, max_failed_keys=max_failed_keys,
            )
        )  # fmt: skip

    def processes(self) -> list[Process]:
        """Every registered process, by name."""
        return self._run(self.async_client.processes())

    def process(self, name: str) -> Process:
        """One registered process; raises UnknownProcess."""
        return self._run(self.async_client.process(name))

    def progress(self, name: str) -> Progress:
        """The process's current pass: counts, recent rate, ETA and the first quarantined keys."""
        return self._run(self.async_client.progress(name))

    def unregister(self, name: str) -> Process:
        """Delete a process, ending all of its leases."""
        return self._run(self.async_client.unregister(name))

    def purge_history(self, name: str) -> None:
        """Forget a deleted process's history now (admin), rather than when it expires."""
        self._run(self.async_client.purge_history(name))

    def keys(self, name: str) -> list[BatchKey]:
        """The state of every key of a process."""
        return self._run(self.async_client.keys(name))

    def key(self, name: str, key: int) -> BatchKey:
        """One key of a process; raises UnknownProcess, or UnknownKey outside its keys."""
        return self._run(self.async_client.key(name, key))

    def iter_keys(
        self, name: str, after: int | None = None, limit: int | None = None
    ) -> Generator[BatchKey, None, None]:
        """The keys of a process in order, after key `after`, at most `limit`.

        Fetched ITER_CHUNK keys at a time as they are consumed, so any number of keys can be
        listed without holding them all; raises UnknownProcess at the first.
        """
        return self._drained(self.async_client.iter_keys(name, after, limit))

    def iter_processes(
        self, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> Generator[Process, None, None]:
        """Registered processes by name, starting with `prefix`, after `after`, at most
        `limit`: fetched ITER_CHUNK at a time as they are consumed."""
        return self._drained(self.async_client.iter_processes(prefix, after, limit))

    def _drained(self, items: AsyncIterator[T]) -> Generator[T, None, None]:
        """An async listing as a blocking generator, ITER_CHUNK items per hop to the loop."""

        async def chunk() -> list[T]:
            taken: list[T] = []
            async for item in items:  # leaving the loop early does not close `items`
                taken.append(item)
                if len(taken) == ITER_CHUNK:
                    break
            return taken

        try:
            while taken := self._run(chunk()):
                yield from taken
        except GeneratorExit:  # the caller stopped early: stop reading too
            if isinstance(items, AsyncGenerator):
                self._run(items.aclose())
            raise

    def acquire(
        self,
        name: str,
        machine: str | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float = 0,
        request_id: str | None = None,
    ) -> BatchKey:
        """Lease the stalest free key, waiting up to `wait_seconds` for one to free.

        `machine` defaults to HOST:PID; `request_id` (a new uuid4 when None) makes
        the grant safe to send again, as transient failures are.
        """
        return self._run(
            self.async_client.acquire(name, machine, lease_seconds, wait_seconds, request_id)
        )

    def renew(
        self,
        external_id: str,
        lease_seconds: int | None = None,
        checkpoint: str | Unset | None = UNSET,
    ) -> BatchKey:
        """Extend a live lease from now, saving `checkpoint` unless left out."""
        return self._run(self.async_client.renew(external_id, lease_seconds, checkpoint))

    def start_pass(self, name: str, after: int | None = None) -> Process:
        """Start the next pass now (admin), if `after` (when given) is still the current one;
        returns the process in its current pass."""
        return self._run(self.async_client.start_pass(name, after))

    def pass_info(self, name: str, number: int, wait_seconds: int = 0) -> Pass:
        """Pass `number`; for the current pass, wait up to `wait_seconds` for it to complete."""
        return self._run(self.async_client.pass_info(name, number, wait_seconds))

    def retry_key(self, name: str, key: int) -> BatchKey:
        """Lift a key's quarantine and backoff and reset its attempts (admin)."""
        return self._run(self.async_client.retry_key(name, key))

    def retry_keys(self, name: str, keys: list[int]) -> Redrive:
        """Retry each of `keys` as `retry_key` does, all or none (admin)."""
        return self._run(self.async_client.retry_keys(name, keys))

    def retry_quarantined(self, name: str) -> Redrive:
        """Retry every quarantined key of the process (admin), a chunk at a time."""
        return self._run(self.async_client.retry_quarantined(name))

    def release(self, external_id: str, outcome: str = "completed") -> BatchKey | None:
        """End a live lease as `completed`, `failed`, `interrupted` or `fatal` (quarantined at
        once); None when a retry found it already ended (an earlier attempt, whose answer was
        lost, took effect)."""
        return self._run(self.async_client.release(external_id, outcome))

    def revoke(self, external_id: str) -> BatchKey:
        """End a lease now, as an administrator."""
        return self._run(self.async_client.revoke(external_id))

    def events(self, name: str, after: str = "-", limit: int = 100) -> list[Event]:
        """The process's history after event id `after`, oldest first."""
        return self._run(self.async_client.events(name, after, limit))

    def lease(
        self,
        name: str,
        machine: str | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float = 0,
    ) -> LeaseContext:
        """`with coordinator.lease(...) as lease:` holds a key, renewing it meanwhile.

        `machine` defaults to HOST:PID (this host's name and process id).
        """
        lease = self.async_client.lease(name, machine, lease_seconds, wait_seconds)
        return LeaseContext(self._portal, lease)

    def close(self) -> None:
        """Close connections and stop the client's thread."""
        self._run(self.async_client.aclose())
        self._portal.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, awaitable: Awaitable[T]) -> T:
        async def run() -> T:
            return await awaitable

        return self._portal.call(run())


class HttpCoordinator(Coordinator):
    """The blocking client over the HTTP API; `outage_budget_seconds` as AsyncCoordinator's.

    Without `base_url` it calls what the CLI would: COORDINATOR_URL, else the server running on
    the data folder (COORDINATOR_DATA_DIR, else ./.coordinator-data), else
    http://127.0.0.1:8000; without `token`, COORDINATOR_TOKEN (`token=""` sends none).
    `service` says which.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        outage_budget_seconds: float | None = None,
    ) -> None:
        # Located once, here: the async client is handed the answer, not asked again.
        self.service = service = locate(base_url, token)
        super().__init__(
            lambda: AsyncHttpCoordinator(
                service.url, service.token or "", timeout,
                outage_budget_seconds=outage_budget_seconds,
            )
        )  # fmt: skip


class RedisCoordinator(Coordinator):
    """The blocking client that runs the service's Lua scripts directly on Redis."""

    def __init__(
        self, redis_url: str, prefix: str = "bpc", outage_budget_seconds: float | None = None
    ) -> None:
        super().__init__(
            lambda: AsyncRedisCoordinator(
                redis_url, prefix, outage_budget_seconds=outage_budget_seconds
            )
        )
