"""A quarantined key remembers when it was quarantined (keyinfo `q:<key>`), and the progress
lists it as `at`.

Every ending that quarantines stores the time of the script that ended the lease (Redis TIME):
a failed release, a revoke, a fatal release (also on a process without options), and an expiry
found by a release or by a grant. A retry (one key or all quarantined) and a new pass remove it
with the quarantine, so no `q:` field outlives its key's quarantine. On the real Valkey, whose
TIME is the clock the scripts read: each time must fall within the call that quarantined.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import anyio
import pytest
from redis.asyncio import Redis

from coordinator.errors import AllQuarantined, LeaseGone
from coordinator.models import BatchKey, utc
from coordinator.progress import QuarantinedKey
from coordinator.progress_read import read_progress
from coordinator.store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(valkey_redis: Redis, prefix: str) -> Store:
    """The store on the real Valkey only: its TIME is the clock the window is read from."""
    return Store(valkey_redis, prefix=prefix)


async def _now(store: Store) -> datetime:
    seconds, micros = await store.redis.time()
    at = utc(seconds * 1_000_000 + micros)
    assert at is not None
    return at


class Window:
    """The Redis times before and after a block of calls."""

    start: datetime
    end: datetime

    def __contains__(self, moment: object) -> bool:
        return isinstance(moment, datetime) and self.start <= moment <= self.end


@asynccontextmanager
async def _window(store: Store) -> AsyncIterator[Window]:
    window = Window()
    window.start = await _now(store)
    yield window
    window.end = await _now(store)


async def _listed(store: Store, name: str) -> dict[int, QuarantinedKey]:
    progress = await read_progress(store.redis, store.keys, name)
    return {q.key: q for q in progress.quarantined}


async def _q_fields(store: Store, name: str) -> list[str]:
    fields = await store.redis.hkeys(store.keys.process(name).keyinfo)
    return sorted(f for f in fields if f.startswith("q:"))


Ending = Callable[[Store, BatchKey], Awaitable[BatchKey]]


async def _failed(store: Store, lease: BatchKey) -> BatchKey:
    return await store.release(lease.external_id, "failed")


async def _revoked(store: Store, lease: BatchKey) -> BatchKey:
    return await store.revoke(lease.external_id)


async def _fatal(store: Store, lease: BatchKey) -> BatchKey:
    return await store.release(lease.external_id, "fatal")


@pytest.mark.parametrize(
    ("ending", "options"),
    [
        (_failed, {"max_attempts": 1}),
        (_revoked, {"max_attempts": 1}),
        (_fatal, {"max_attempts": 5, "retry_backoff_seconds": 60}),
        (_fatal, {}),  # no options: the fatal end parks the key all the same
    ],
    ids=["failed", "revoked", "fatal", "fatal-without-options"],
)
async def test_a_quarantining_end_stores_its_time(
    store: Store, new_name: Callable[[], str], ending: Ending, options: dict[str, int]
) -> None:
    name = new_name()
    await store.register(name, key_set_size=3, **options)
    lease = await store.grant(name, "host-a/1")
    async with _window(store) as window:
        ended = await ending(store, lease)
    assert ended.state == "quarantined"
    quarantined = (await _listed(store, name))[lease.key]
    assert quarantined.machine == "host-a/1"
    assert quarantined.at in window, (quarantined.at, window.start, window.end)
    assert await _q_fields(store, name) == [f"q:{lease.key}"]
    # The JSON says it as every other time of the API does: RFC 3339 UTC.
    assert quarantined.to_json()["at"].endswith("Z")
    assert QuarantinedKey.from_json(quarantined.to_json()) == quarantined


async def _expired(store: Store, lease: BatchKey) -> None:
    """Until Redis's clock is past the lease's end (polled, not slept for)."""
    assert lease.expires_at is not None
    while await _now(store) <= lease.expires_at:  # noqa: ASYNC110 - Redis's clock, not an event
        await anyio.sleep(0.05)


async def test_an_expiry_stores_the_time_it_was_found(
    store: Store, new_name: Callable[[], str]
) -> None:
    """The time is the end's as the script saw it, the release's or grant's that found the
    lease expired, not the lease's expiry."""
    name = new_name()
    await store.register(name, key_set_size=2, lease_seconds=1, max_attempts=1)
    by_release = await store.grant(name, "host-d/4")
    by_grant = await store.grant(name, "host-c/3")
    await _expired(store, by_grant)
    async with _window(store) as late_release:
        with pytest.raises(LeaseGone):
            await store.release(by_release.external_id, "completed")
    async with _window(store) as found_by_grant:
        with pytest.raises(AllQuarantined):
            await store.grant(name, "host-e/5")
    listed = await _listed(store, name)
    assert listed[by_release.key].at in late_release
    assert listed[by_grant.key].at in found_by_grant
    assert (listed[by_release.key].machine, listed[by_grant.key].machine) == (
        "host-d/4",
        "host-c/3",
    )


async def test_a_retry_clears_the_time_and_a_new_quarantine_stores_its_own(
    store: Store, new_name: Callable[[], str]
) -> None:
    name = new_name()
    await store.register(name, key_set_size=4, mode="once", max_attempts=1)
    first = await store.grant(name, "host-a/1")
    await _failed(store, first)
    async with _window(store) as first_end:
        pass
    assert (await _listed(store, name))[first.key].at is not None
    await store.retry_key(name, first.key)
    assert await _q_fields(store, name) == []
    assert await _listed(store, name) == {}
    again = await store.grant(name, "host-b/2")
    assert again.key == first.key  # back at its old place: the stalest
    async with _window(store) as second_end:
        await _failed(store, again)
    at = (await _listed(store, name))[first.key].at
    assert at in second_end
    assert at is not None
    assert at >= first_end.end


async def test_retrying_all_quarantined_clears_every_time(
    store: Store, new_name: Callable[[], str]
) -> None:
    name = new_name()
    await store.register(name, key_set_size=5, mode="once", max_attempts=1)
    for n in range(3):
        await _fatal(store, await store.grant(name, f"host-{n}"))
    assert len(await _q_fields(store, name)) == 3
    redrive = await store.retry_quarantined(name)
    assert redrive.quarantined == 3
    assert await _q_fields(store, name) == []


async def test_a_new_pass_clears_every_time(store: Store, new_name: Callable[[], str]) -> None:
    name = new_name()
    await store.register(name, key_set_size=4, mode="once", max_attempts=1)
    for n in range(2):
        await _failed(store, await store.grant(name, f"host-{n}"))
    assert len(await _q_fields(store, name)) == 2
    process = await store.start_pass(name, after=1)
    assert process.pass_ is not None
    assert process.pass_.number == 2
    assert await _q_fields(store, name) == []
    assert await _listed(store, name) == {}
