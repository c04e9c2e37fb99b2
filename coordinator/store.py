"""The coordinator's operations on Redis, shared by the HTTP API and direct workers.

Every change is one Lua script (see `lua/`); this module builds the keys and arguments,
turns replies into records (`coordinator.models`), and turns failures into the exceptions of
`coordinator.errors`. `Store` is what the HTTP API and the direct clients of
`coordinator.client` (`RedisCoordinator`, `AsyncRedisCoordinator`) both run on.

This module holds the keys and their leases (grant, renew, release, revoke, reads); the
process registry (`coordinator.registry`) and batch runs (`coordinator.runs`) are mixed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator import lease_id, validation
from coordinator.errors import CoordinatorError, StoreUnavailable, UnknownKey, UnknownLease
from coordinator.keys import KeySpace
from coordinator.lease_margin import over_on_arrival
from coordinator.models import BatchKey, utc
from coordinator.pass_watch import PassWatch
from coordinator.redrive import BulkRetry
from coordinator.registry import ProcessRegistry
from coordinator.rows import batch_key_of, completed, key_objects
from coordinator.runs import BatchRuns
from coordinator.scripts import Scripts, raise_for_status
from coordinator.unavailable import store_errors
from coordinator.validation import UNSET, Unset
from coordinator.waiters import DEFAULT_MAX_WAITERS, Waiters

if TYPE_CHECKING:
    from coordinator.connection import RedisClient

# Keys one inspect.lua call of a listing reads: 1,000 held Valkey 3.6-8 ms when every key
# had been touched; 250 holds it about 1 ms, and the server's loop as long for the chunk.
INSPECT_CHUNK = 250

_PROCESS_ID_CACHE_MAX = 65_536


@dataclass(frozen=True, slots=True)
class Limits:
    """Defaults and bounds a deployment sets."""

    default_key_set_size: int = 10
    """Keys of a process registered without `key_set_size` (at most `max_key_set_size`)."""
    max_key_set_size: int = 1_000_000
    """The largest `key_set_size` accepted (COORDINATOR_MAX_KEY_SET_SIZE)."""
    default_lease_seconds: int = 3600
    """Lease length of a process registered without `lease_seconds`."""
    events_cap: int = 10_000
    """Entries each process's event history keeps, approximately."""
    deleted_history_seconds: int = validation.DELETED_HISTORY_SECONDS_DEFAULT
    """How long a deleted process's history (and its leases' 410s) stays before it expires."""


# ProcessRegistry first, so its `process` wins over the stub BatchRuns declares.
class Store(ProcessRegistry, BatchRuns, BulkRetry):
    """Register processes, grant, renew and release their keys; all state stays in Redis."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str = "bpc",
        limits: Limits | None = None,
        replica_acks: int = 0,
        replica_timeout_ms: int = 1000,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        max_waiters_per_token: int | None = None,
    ) -> None:
        self.redis = redis
        self.keys = KeySpace(prefix)
        self.limits = limits or Limits()
        # replica_acks > 0: every change waits (WAIT) until that many replicas hold it.
        self.scripts = Scripts(
            redis, replica_acks=replica_acks, replica_timeout_ms=replica_timeout_ms
        )
        # Told how many expired leases each grant returned to the free set (metrics).
        self.on_reclaimed: Callable[[int], None] | None = None
        # Process id -> name is fixed by the hash, so this cache never goes stale.
        self._names: dict[int, str] = {}
        # Grants waiting for a key on this replica: queued, not one connection each.
        self.waiters = Waiters(
            redis, max_waiters=max_waiters, max_waiters_per_token=max_waiters_per_token
        )
        # Pass waits: one history reader per process, however many wait on it.
        self.pass_watch = PassWatch(redis)

    async def aclose(self) -> None:
        """Stop the waiters' listeners (waiting grants answer StoreUnavailable) and close the
        scripts' shared connection."""
        await self.waiters.aclose()
        await self.pass_watch.aclose()
        await self.scripts.aclose()

    async def batch_keys(
        self, name: str, first: int = 0, limit: int | None = None
    ) -> list[BatchKey]:
        """The state of the keys of a process from key `first` on (at most `limit`), in order."""
        return [key async for key in self.iter_batch_keys(name, first, limit)]

    async def batch_key(self, name: str, key: int) -> BatchKey:
        """One key of a process; UnknownKey outside 0 to key_set_size - 1."""
        name = validation.process_name(name)
        key = validation.key(key)
        k = self.keys.process(name)
        # A key past any key set still asks the script (for no keys), so an unknown process
        # is reported before an unknown key.
        in_range = 0 <= key <= validation.KEY_MAX
        with store_errors():
            reply = await self.scripts.call(
                "inspect", k.of("inspect"), [key if in_range else 0, int(in_range), "1"]
            )
        raise_for_status(reply, process_name=name)
        size, rows = int(reply[1]), reply[4:]
        if not rows:
            raise UnknownKey(name, key, size)
        return batch_key_of(name, rows[0], with_checkpoint=True)

    async def iter_batch_keys(
        self, name: str, first: int = 0, limit: int | None = None
    ) -> AsyncIterator[BatchKey]:
        """The keys of a process, read in consistent chunks so no script runs long."""
        async for chunk in self.batch_key_chunks(name, first, limit):
            for key in chunk:
                yield key

    async def batch_key_chunks(
        self, name: str, first: int = 0, limit: int | None = None
    ) -> AsyncIterator[list[BatchKey]]:
        """The keys of a process, one consistent read of at most INSPECT_CHUNK keys per
        (non-empty) chunk, giving other requests their turn between chunks."""
        name = validation.process_name(name)
        async for rows in self._inspect_chunks(name, first, limit):
            yield [batch_key_of(name, row) for row in rows]

    async def batch_key_object_chunks(
        self, name: str, first: int = 0, limit: int | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """`batch_key_chunks` as the key objects of a listing, built without the records (a
        listing's time on the event loop, which every other request shares)."""
        name = validation.process_name(name)
        async for rows in self._inspect_chunks(name, first, limit):
            yield key_objects(name, rows)

    async def _inspect_chunks(
        self, name: str, first: int, limit: int | None
    ) -> AsyncIterator[list[list[Any]]]:
        """inspect.lua's rows of the keys of `name` (a checked name), as batch_key_chunks."""
        k = self.keys.process(name)
        stop = None if limit is None else first + limit
        size = first + 1
        while first < size and (stop is None or first < stop):
            count = INSPECT_CHUNK if stop is None else min(INSPECT_CHUNK, stop - first)
            with store_errors():
                reply = await self.scripts.call("inspect", k.of("inspect"), [first, count])
            raise_for_status(reply, process_name=name)
            size = int(reply[1])
            if rows := reply[4:]:
                yield rows
            first += count
            await asyncio.sleep(0)

    async def grant(
        self,
        name: str,
        machine: str,
        lease_seconds: int | None = None,
        wait_seconds: float = 0,
        *,
        holder: str = "",
        request_id: str | None = None,
    ) -> BatchKey:
        """Lease the free key whose work is stalest.

        While a lease granted with the same `request_id` is live, that lease is answered
        again (`replayed`), so a grant whose answer was lost can be sent again safely; once
        that lease has ended, LeaseGone (naming it) is raised, for at least the lease's length,
        and no key is taken.

        `holder` (hex digits: the API passes its caller's token id) is the only one, besides a
        caller passing none, who may then renew or release the lease.

        When none is free, wait up to `wait_seconds` for the first one released or expired,
        then raise NoFreeKey. Waiters queue on this replica, woken in turn by one listener per
        process on its `freed` list, which every release pushes to (see `waiters`); past
        `max_waiters` of them, or `max_waiters_per_token` of `holder`'s, NoFreeKey comes at once.
        """
        name = validation.process_name(name)
        machine = validation.machine(machine)
        lease_ms = 0 if lease_seconds is None else validation.lease_seconds(lease_seconds) * 1000
        wait_seconds = validation.wait_seconds(wait_seconds)
        rid = validation.request_id(request_id) or ""
        k = self.keys.process(name)

        async def attempt() -> list[Any]:
            sent = time.monotonic()
            with store_errors():
                reply = await self.scripts.call(
                    "grant", k.of("grant"), [machine, lease_ms, self.limits.events_cap, holder, rid]
                )
            raise_for_status(reply, process_name=name)
            # A fresh lease whose answer came too late to be of use goes back, never out as a
            # lease already over. (A replayed one started earlier, which this clock cannot see.)
            if not reply[11] and over_on_arrival(int(reply[7]), sent):
                with contextlib.suppress(CoordinatorError):  # else it ends with its lease
                    await give_back(reply)
                raise StoreUnavailable(
                    f"Redis answered the grant {time.monotonic() - sent:.1f} s after it was sent,"
                    f" too late for its {int(reply[7]) / 1000:g} s lease; it was given back:"
                    " try again."
                )
            return reply

        async def give_back(reply: list[Any]) -> None:
            """A lease granted for nobody goes back as it was: its place, no attempt counted."""
            # Its name is known, so the release makes no lookup first: it must land in time.
            self._names.setdefault(lease_id.process_id(name), name)
            await self.release(lease_id.external_id(name, reply[2]), "interrupted")

        reply = await self.waiters.grant(k.freed, attempt, wait_seconds, give_back, holder)
        _, key, token, started, expires, last, _size, _lease_ms, reclaimed = reply[:9]
        attempts, checkpoint, replayed = reply[9:12]
        if reclaimed and self.on_reclaimed is not None:
            self.on_reclaimed(int(reclaimed))
        return BatchKey(
            process_name=name,
            key=key,
            last_completed_at=utc(completed(last)),
            external_id=lease_id.external_id(name, token),
            # A replayed grant is the earlier lease: its machine is the one it was granted to.
            machine=machine,
            started_at=utc(started),
            expires_at=utc(expires),
            fencing_token=token,
            attempts=int(attempts),
            state="held",
            checkpoint=checkpoint if isinstance(checkpoint, str) else None,
            with_checkpoint=True,
            replayed=bool(replayed),
        )

    async def renew(
        self,
        external_id: str,
        lease_seconds: int | None = None,
        holder: str = "",
        checkpoint: str | Unset | None = UNSET,
    ) -> BatchKey:
        """Extend a live lease from now, by `lease_seconds` or by its own length.

        A `holder` other than the one the lease was granted to raises NotLeaseHolder; ""
        (administrators, trusted direct workers) may renew any lease. A `checkpoint` string is
        saved with the key for its next holder (None clears it); only a live lease saves one.
        """
        lease_ms = 0 if lease_seconds is None else validation.lease_seconds(lease_seconds) * 1000
        saving: list[str | int] = []
        if not isinstance(checkpoint, Unset):
            value = validation.checkpoint(checkpoint)
            saving = ["clear"] if value is None else ["set", value]
        name, token = await self._resolve(external_id)
        k = self.keys.process(name)
        with store_errors():
            reply = await self.scripts.call(
                "renew", k.of("renew"), [token, lease_ms, self.limits.events_cap, holder, *saving]
            )
        raise_for_status(reply, process_name=name, external_id=external_id)
        _, key, token, started, expires, last, _lease_ms, machine, attempts = reply
        return BatchKey(
            name,
            key,
            utc(completed(last)),
            external_id,
            machine,
            utc(started),
            utc(expires),
            token,
            attempts=int(attempts),
            state="held",
        )

    async def release(
        self, external_id: str, outcome: str = "completed", holder: str = ""
    ) -> BatchKey:
        """End a live lease; `completed` stamps the key's completion, `failed` counts an
        attempt, `interrupted` (the work was stopped) gives the key back as it was: at its old
        place, no attempt counted, its checkpoint kept.

        `holder` is checked as by `renew`.
        """
        return await self._end(external_id, validation.outcome(outcome), holder)

    async def revoke(self, external_id: str) -> BatchKey:
        """End a live lease now, as an administrator: no completion stamped, the holder's next
        renew or release answers LeaseGone."""
        return await self._end(external_id, validation.REVOKED)

    async def _end(self, external_id: str, outcome: str, holder: str = "") -> BatchKey:
        name, token = await self._resolve(external_id)
        k = self.keys.process(name)
        with store_errors():
            reply = await self.scripts.call(
                "release", k.of("release"), [token, outcome, self.limits.events_cap, holder]
            )
        raise_for_status(reply, process_name=name, external_id=external_id)
        _, key, token, started, last, machine, attempts, state, retry_at = reply
        return BatchKey(
            name,
            key,
            utc(completed(last)),
            external_id,
            machine,
            utc(started),
            None,
            token,
            attempts=int(attempts),
            state=str(state),
            retry_at=utc(int(retry_at) or None),
        )

    async def check_ready(self) -> None:
        """Prove a script round trip works, reloading any script Redis has forgotten."""
        probe = self.keys.process("readiness-probe")
        with store_errors():
            await self.scripts.load_missing()
            await self.scripts.call("inspect", [probe.meta, probe.free, probe.leases], [0, 0])

    async def process_name_of(self, external_id: str) -> str:
        """The process a lease belongs to; UnknownLease if the id cannot be one of ours."""
        name, _ = await self._resolve(external_id)
        return name

    async def _resolve(self, external_id: str) -> tuple[str, int]:
        """The process name and token an external id stands for, or UnknownLease."""
        parsed = lease_id.parse(external_id)
        if parsed is None:
            raise UnknownLease(external_id)
        pid, token = parsed
        name = self._names.get(pid)
        if name is None:
            hex_id = f"{pid:016x}"
            with store_errors():
                found = await self.redis.hget(self.keys.process_ids, hex_id)
                if found is None:  # a deleted process's, while its history stays
                    found = await self.redis.get(self.keys.retired_id(hex_id))
            if found is None:
                raise UnknownLease(external_id)
            name = str(found)
            if len(self._names) >= _PROCESS_ID_CACHE_MAX:
                self._names.clear()
            self._names[pid] = name
        return name, token
