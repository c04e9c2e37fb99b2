"""Bulk redrive: retry a list of keys, or every quarantined key of a process, a chunk at a time.

retry_key.lua retries at most RETRY_CHUNK keys per call, so retrying a million quarantined
keys is four thousand short calls, each about a millisecond, with other requests served
between them, never one call that holds Redis for seconds. The Store mixes this in, so the
HTTP API and direct workers share it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coordinator import validation
from coordinator.errors import InvalidField, UnknownProcess
from coordinator.models import Redrive
from coordinator.scripts import raise_for_status
from coordinator.unavailable import store_errors

if TYPE_CHECKING:
    from coordinator.connection import RedisClient
    from coordinator.keys import KeySpace
    from coordinator.scripts import Scripts
    from coordinator.store import Limits


class BulkRetry:
    """The bulk retry of the Store (mixed in)."""

    redis: RedisClient
    keys: KeySpace
    scripts: Scripts
    limits: Limits

    async def retry_keys(self, name: str, keys: list[int]) -> Redrive:
        """Retry each of `keys` as retry_key does (admin); InvalidField, changing nothing,
        when one is outside the process's keys."""
        name = validation.process_name(name)
        keys = validation.key_list(keys)
        k = self.keys.process(name)
        # The whole list is checked before the first chunk changes anything.
        with store_errors():
            size = await self.redis.hget(k.meta, "size")
        if size is None:
            raise UnknownProcess(name)
        outside = next((key for key in keys if key >= int(size)), None)
        if outside is not None:
            raise InvalidField(
                "keys", f"holds {outside}, outside the keys of '{name}' (0 to {int(size) - 1})"
            )
        done = Redrive()
        for first in range(0, len(keys), validation.RETRY_CHUNK):
            chunk = keys[first : first + validation.RETRY_CHUNK]
            done += (await self._retry_chunk(name, ["keys", *chunk]))[0]
        return done

    async def retry_quarantined(self, name: str) -> Redrive:
        """Retry every key of the process quarantined when the call began (admin): lift the
        quarantine, reset attempts, reopen a completed `once` pass."""
        name = validation.process_name(name)
        done, left = await self._retry_chunk(name, ["quarantined", validation.RETRY_CHUNK])
        # At most the keys quarantined at the first call: a process that quarantines keys as
        # fast as they are retried cannot keep the loop going.
        budget = done.quarantined + left
        while left and done.retried < budget:
            more, left = await self._retry_chunk(
                name, ["quarantined", min(validation.RETRY_CHUNK, budget - done.retried)]
            )
            if not more.retried:
                break
            done += more
        return done

    async def _retry_chunk(self, name: str, args: list[Any]) -> tuple[Redrive, int]:
        """One retry_key.lua call: what it did, and how many keys are quarantined after it."""
        k = self.keys.process(name)
        with store_errors():
            reply = await self.scripts.call(
                "retry_key", k.of("retry_key"), [self.limits.events_cap, *args]
            )
        key = int(reply[1]) if len(reply) > 1 and str(reply[1]).isdigit() else -1
        raise_for_status(reply, process_name=name, key=key)
        return Redrive(int(reply[1]), int(reply[2]), int(reply[3])), int(reply[4])
