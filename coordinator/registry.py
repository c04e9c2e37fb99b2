"""The process registry: register, list, read and delete processes, and read or purge
their history.

A process is its `meta` hash (size, lease, batch-run options, the current pass) plus its
listing in the registry sorted set and its id in `process_ids`, which lease ids resolve
through. The Store mixes these operations in, so the HTTP API and direct workers share them.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from coordinator import lease_id, name_ranges, validation
from coordinator.drain import drain
from coordinator.errors import ProcessExists, UnknownProcess
from coordinator.models import Event, Pass, Process, utc
from coordinator.scripts import raise_for_status
from coordinator.unavailable import store_errors

if TYPE_CHECKING:
    from coordinator.connection import RedisClient
    from coordinator.keys import KeySpace
    from coordinator.name_ranges import Scope
    from coordinator.scripts import Scripts
    from coordinator.store import Limits


# Names one listing read takes: a ZRANGEBYLEX of them, then one pipeline of two cheap reads
# each (HMGET, ZCOUNT). Building and reading that pipeline is what holds the event loop:
# 500 names took 18 ms of CPU a chunk, 100 take under 4 ms (Valkey: about 0.3 ms).
PROCESS_CHUNK = 100


class ProcessRegistry:
    """The process operations of the Store (mixed in)."""

    redis: RedisClient
    keys: KeySpace
    scripts: Scripts
    limits: Limits
    # Process id -> name, which lease ids resolve through (kept by Store._resolve).
    _names: dict[int, str]

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
        """Register a process of `key_set_size` keys; raises ProcessExists if the name is taken.

        `mode`, `max_attempts`, `retry_backoff_seconds` and `max_failed_keys` (`once` only)
        are the batch-run options (README "Batch runs"); left out, the process behaves as the
        seed's.
        """
        name = validation.new_process_name(name)
        size = validation.key_set_size(
            # The default never exceeds a deployment's smaller maximum.
            min(self.limits.default_key_set_size, self.limits.max_key_set_size)
            if key_set_size is None
            else key_set_size,
            self.limits.max_key_set_size,
        )
        lease = validation.lease_seconds(
            self.limits.default_lease_seconds if lease_seconds is None else lease_seconds
        )
        mode = validation.mode("rotate" if mode is None else mode)
        attempts = validation.max_attempts(max_attempts)
        backoff = validation.retry_backoff_seconds(retry_backoff_seconds or 0)
        max_failed = validation.max_failed_keys(max_failed_keys, size, mode)
        args: list[str | int] = [size, lease * 1000, self.limits.events_cap, mode, attempts or 0]
        # max_failed_keys is sent only when set, so the call is the same as before otherwise.
        args += [backoff * 1000] + ([] if max_failed is None else [max_failed])
        pid = f"{lease_id.process_id(name):016x}"
        with store_errors():
            # A pid is never reassigned, so a failed HSETNX followed by a read is race-free.
            claimed = await self.redis.hsetnx(self.keys.process_ids, pid, name)
            owner = name if claimed else str(await self.redis.hget(self.keys.process_ids, pid))
            if owner != name:
                raise ProcessExists(name, f"'{name}' shares its id with process '{owner}'.")
            reply = await self.scripts.call(
                "register",
                self.keys.process(name).of("register"),
                args,
            )
            # The name is listed only once its keys exist, so a listing never shows a
            # half-made process; a duplicate registration re-lists it, healing a crash
            # between the two steps.
            await self.redis.zadd(self.keys.registry, {name: 0})
        raise_for_status(reply, process_name=name)
        started = utc(int(reply[1]))
        assert started is not None
        return Process(
            name, size, lease, mode, attempts, backoff, Pass(1, started), max_failed_keys=max_failed
        )

    async def processes(
        self, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> list[Process]:
        """Registered processes by name: starting with `prefix`, after `after`, at most `limit`."""
        return [p async for chunk in self.process_chunks(prefix, after, limit) for p in chunk]

    async def process_chunks(
        self,
        prefix: str = "",
        after: str | None = None,
        limit: int | None = None,
        scope: Scope | None = None,
    ) -> AsyncIterator[list[Process]]:
        """Registered processes in name order, PROCESS_CHUNK names read at a time: those
        starting with `prefix`, after the name `after`, at most `limit`, and only those
        `scope` covers (reading only the runs of names its patterns can match)."""
        # A prefix of a name is itself a name, so both are checked as names.
        prefix = prefix and validation.process_name(prefix, "prefix")
        after = None if after is None else validation.process_name(after, "after")
        left = limit
        for run in name_ranges.ranges(prefix, None if scope is None else scope.processes):
            cursor = after
            while left is None or left > 0:
                bounds = run.bounds(cursor)
                if bounds is None:
                    break
                wanted = PROCESS_CHUNK if left is None else min(left, PROCESS_CHUNK)
                with store_errors():
                    names = [
                        str(n)
                        for n in await self.redis.zrangebylex(
                            self.keys.registry, *bounds, start=0, num=wanted
                        )
                    ]
                if not names:
                    break
                cursor = names[-1]
                shown = names if scope is None else [n for n in names if scope.may_act_on(n)]
                chunk = await self._listed(shown)
                if left is not None:
                    left -= len(chunk)
                if chunk:
                    yield chunk
                if len(names) < wanted:
                    break
                # A long listing gives other requests their turn between chunks.
                await asyncio.sleep(0)

    async def _listed(self, names: list[str]) -> list[Process]:
        """The processes of `names` still registered, in one round trip."""
        if not names:
            return []
        with store_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    k = self.keys.process(name)
                    pipe.hmget(k.meta, *_META_FIELDS)
                    pipe.zcount(k.parked, "+inf", "+inf")
                replies = await pipe.execute()
        metas, quarantined = replies[::2], replies[1::2]
        return [
            _process(name, meta, q)
            for name, meta, q in zip(names, metas, quarantined, strict=True)
            if meta[0]
        ]

    async def process(self, name: str) -> Process:
        """One registered process."""
        name = validation.process_name(name)
        k = self.keys.process(name)
        with store_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(k.meta, *_META_FIELDS)
                pipe.zcount(k.parked, "+inf", "+inf")
                meta, quarantined = await pipe.execute()
        if not meta[0]:
            raise UnknownProcess(name)
        return _process(name, meta, quarantined)

    async def unregister(self, name: str) -> Process:
        """Delete a process, ending all of its leases; returns it as it was.

        Its history and the 410s of its leases stay for `deleted_history_seconds`, then only
        its fence is left (so tokens keep rising if the name is registered again).
        """
        name = validation.process_name(name)
        k = self.keys.process(name)
        doomed = self.keys.doomed(name, secrets.token_hex(8))
        history_ms = self.limits.deleted_history_seconds * 1000
        # As it was: its options and pass too, which the script's reply does not carry.
        before = await self.process(name)
        with store_errors():
            await self.redis.zrem(self.keys.registry, name)
            reply = await self.scripts.call(
                "unregister",
                k.of("unregister") + list(doomed.values()),
                [self.limits.events_cap, history_ms],
            )
            raise_for_status(reply, process_name=name)
            pid = f"{lease_id.process_id(name):016x}"
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.retired_id(pid), name, px=history_ms)
                pipe.hdel(self.keys.process_ids, pid)
                pipe.exists(k.meta)
                *_, registered_again = await pipe.execute()
            if registered_again:
                # A registration of the name ran between the script and here: keep its id.
                await self.redis.hset(self.keys.process_ids, pid, name)
            # Before answering, so a delete is done when its memory is back (coordinator.drain);
            # a caller that dies first leaves doomed keys that expire.
            await drain(self.redis, doomed)
        return before

    async def purge_history(self, name: str) -> None:
        """Forget a deleted process's history now, rather than when it expires (admin)."""
        name = validation.process_name(name)
        k = self.keys.process(name)
        pid = f"{lease_id.process_id(name):016x}"
        with store_errors():
            if await self.redis.exists(k.meta):
                raise ProcessExists(
                    name, f"Process '{name}' is registered: delete it before purging its history."
                )
            removed = await self.redis.unlink(k.events)
            removed += await self.redis.unlink(self.keys.retired_id(pid))
        if not removed:
            raise UnknownProcess(name)
        self._names.pop(int(pid, 16), None)

    async def events(self, name: str, after: str = "-", limit: int = 100) -> list[Event]:
        """The process's history after stream id `after`, oldest first (kept after a delete)."""
        name = validation.process_name(name)
        after = validation.event_id(after)
        k = self.keys.process(name)
        with store_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.exists(k.meta, k.events)
                # Nothing can follow the last possible id, and Redis refuses "(" on it.
                if after != validation.EVENT_ID_LAST:
                    pipe.xrange(k.events, "-" if after == "-" else f"({after}", "+", count=limit)
                present, *read = await pipe.execute()
        if not present:
            raise UnknownProcess(name)
        rows = read[0] if read else []
        return [Event.from_stream(name, entry_id, fields) for entry_id, fields in rows]


# The meta fields a process object is made of, in the order `_process` reads them.
_META_FIELDS = (
    "size",
    "lease_ms",
    "mode",
    "max_attempts",
    "backoff_ms",
    "pass",
    "pass_started_us",
    "pass_completed_us",
    "done",
    "created_us",
    "max_failed",
    "failed",
)


def _process(name: str, meta: list[Any], quarantined: int) -> Process:
    # The fields since the seed's, then the run policy's (max_failed_keys, a failed pass).
    head, (max_failed, failed) = meta[:10], meta[10:]
    size, lease_ms, mode, attempts, backoff_ms, number, started, completed_us, done, created = head
    # A process registered before batch runs is in pass 1, started when it was created.
    started_at = utc(int(started or created or 0))
    assert started_at is not None
    current = Pass(
        number=int(number or 1),
        started_at=started_at,
        completed_at=utc(int(completed_us)) if completed_us else None,
        keys_done=int(done or 0),
        keys_quarantined=int(quarantined),
        # `failed` names the pass that failed, which is this one only while it is complete.
        failed=bool(completed_us) and failed == (number or "1"),
    )
    return Process(
        name,
        int(size),
        int(lease_ms) // 1000,
        mode or "rotate",
        int(attempts) if attempts else None,
        int(backoff_ms or 0) // 1000,
        current,
        max_failed_keys=None if max_failed is None else int(max_failed),
    )
