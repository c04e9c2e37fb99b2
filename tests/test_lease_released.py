"""A lease says, once its block has ended, the key as its release answered it: what `run --loop`
tells of a key whose command failed (attempts, state, retry_at), with no second read."""

from __future__ import annotations

import uuid

import pytest

from coordinator.client import AsyncRedisCoordinator, RedisCoordinator
from coordinator.embedded import EmbeddedValkey

pytestmark = pytest.mark.anyio


def _name() -> str:
    return f"released-{uuid.uuid4().hex[:10]}"


def test_a_blocking_lease_keeps_what_its_release_answered(
    valkey: EmbeddedValkey, prefix: str
) -> None:
    name = _name()
    with RedisCoordinator(valkey.url, prefix=prefix) as coordinator:
        coordinator.register(name, 2, 60, mode="once", max_attempts=2, retry_backoff_seconds=60)
        with coordinator.lease(name, "w") as lease:
            assert lease.released_as is None  # not yet released
            lease.fail()
        released = lease.released_as
        assert released is not None
        assert (released.key, released.state, released.attempts) == (lease.key, "backoff", 1)
        assert released.retry_at == coordinator.key(name, lease.key).retry_at
        with coordinator.lease(name, "w") as done:
            pass
        assert done.released_as is not None
        assert (done.released_as.state, done.released_as.attempts) == ("done", 0)


async def test_an_async_lease_keeps_what_its_release_answered(
    valkey: EmbeddedValkey, prefix: str
) -> None:
    name = _name()
    async with AsyncRedisCoordinator(valkey.url, prefix=prefix) as coordinator:
        await coordinator.register(name, 1, 60, mode="once", max_attempts=1)
        async with coordinator.lease(name, "w") as lease:
            lease.fail()
        assert lease.released_as is not None
        assert (lease.released_as.state, lease.released_as.attempts) == ("quarantined", 1)
