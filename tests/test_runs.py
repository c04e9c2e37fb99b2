"""Batch runs (README "Batch runs"): every rule, decided inside the scripts, on both backends.

Passes with progress, `once` and `rotate` modes, retry budgets and quarantine, backoff,
checkpoints and idempotent grants. Tests that need time to pass run on fakeredis with a
controlled TIME (`clocked`); the rest run on the real Valkey and on fakeredis (`store`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import fakeredis
import pytest

from coordinator.errors import (
    AllQuarantined,
    InvalidField,
    LeaseGone,
    NoFreeKey,
    PassComplete,
    UnknownKey,
    UnknownPass,
)
from coordinator.models import utc
from coordinator.store import Store
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

START_US = 1_800_000_000_000_000


@pytest.fixture
async def clocked(fake_clock: FakeClock, prefix: str) -> AsyncIterator[Store]:
    """A Store on a fresh fakeredis whose TIME the test moves (fake_clock.advance)."""
    fake_clock.now = START_US / 1e6
    client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with client:
        yield Store(client, prefix=prefix)


async def _types(store: Store, name: str) -> list[str]:
    return [e.type for e in await store.events(name)]


async def test_a_process_without_options_is_the_seeds(store: Store, new_name) -> None:
    name = new_name()
    process = await store.register(name, key_set_size=2)
    assert (process.mode, process.max_attempts, process.retry_backoff_seconds) == (
        "rotate",
        None,
        0,
    )
    assert process.pass_ is not None
    assert (process.pass_.number, process.pass_.keys_done) == (1, 0)
    granted = await store.grant(name, "w")
    assert (granted.attempts, granted.state, granted.checkpoint) == (0, "held", None)
    await store.release(granted.external_id, "failed")
    # Keys keep coming back in least-recently-completed order, forever.
    for _ in range(5):
        lease = await store.grant(name, "w")
        await store.release(lease.external_id)
    keys = await store.batch_keys(name)
    assert [k.state for k in keys] == ["free", "free"]


async def test_a_once_pass_grants_each_key_once_then_answers_pass_complete(
    store: Store, new_name
) -> None:
    name = new_name()
    await store.register(name, key_set_size=3, mode="once")
    seen = []
    for _ in range(3):
        lease = await store.grant(name, "w")
        seen.append(lease.key)
        released = await store.release(lease.external_id)
        assert released.state == "done"
    assert sorted(seen) == [0, 1, 2]
    with pytest.raises(PassComplete):
        await store.grant(name, "w")
    # A waiting grant is answered at once, not after its wait.
    with anyio.fail_after(2):
        with pytest.raises(PassComplete):
            await store.grant(name, "w", wait_seconds=30)
    current = (await store.process(name)).pass_
    assert current is not None
    assert current.complete
    assert (current.number, current.keys_done, current.keys_quarantined) == (1, 3, 0)
    assert (await store.pass_info(name, 1)).completed_at == current.completed_at
    assert "pass-completed" in await _types(store, name)
    assert [k.state for k in await store.batch_keys(name)] == ["done"] * 3


async def test_a_once_pass_keeps_failed_keys_until_they_are_done(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=2, mode="once")
    first = await store.grant(name, "w")
    await store.release(first.external_id, "failed")
    again = await store.grant(name, "w")
    assert again.key == first.key  # failed: still the stalest, still to do
    assert again.attempts == 1
    await store.release(again.external_id)
    last = await store.grant(name, "w")
    await store.release(last.external_id)
    with pytest.raises(PassComplete):
        await store.grant(name, "w")


async def test_a_rotate_pass_completes_and_the_next_starts_at_once(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=2)
    a = await store.grant(name, "w")
    await store.release(a.external_id)
    a2 = await store.grant(name, "w")  # key 1, never completed, comes first
    assert a2.key != a.key
    # Key a again and completed twice: counted once.
    b = await store.grant(name, "w")
    await store.release(b.external_id)
    current = (await store.process(name)).pass_
    assert current is not None
    assert (current.number, current.keys_done) == (1, 1)
    await store.release(a2.external_id)
    current = (await store.process(name)).pass_
    assert current is not None
    assert (current.number, current.keys_done, current.complete) == (2, 0, False)
    finished = await store.pass_info(name, 1)
    assert finished.complete
    assert finished.keys_done == 2
    assert current.started_at == finished.completed_at
    types = await _types(store, name)
    assert types.index("pass-completed") < types.index("pass-started")
    # The next pass hands out the keys not done in it first, as before.
    assert (await store.grant(name, "w")).key in (0, 1)


async def test_failures_count_and_quarantine_at_max_attempts(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=2, max_attempts=2)
    lease = await store.grant(name, "w")
    poisoned = lease.key
    released = await store.release(lease.external_id, "failed")
    assert (released.attempts, released.state) == (1, "free")
    lease = await store.grant(name, "w")
    assert (lease.key, lease.attempts) == (poisoned, 1)
    revoked = await store.revoke(lease.external_id)  # a revoke counts as an attempt too
    assert (revoked.attempts, revoked.state) == (2, "quarantined")
    process = await store.process(name)
    assert process.pass_ is not None
    assert process.pass_.keys_quarantined == 1
    assert "quarantined" in await _types(store, name)
    # The quarantined key is never granted; the other one is, again and again.
    for _ in range(3):
        other = await store.grant(name, "w")
        assert other.key != poisoned
        await store.release(other.external_id)
    key = await store.batch_key(name, poisoned)
    assert (key.state, key.attempts) == ("quarantined", 2)


async def test_a_completion_resets_the_attempts(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=1, max_attempts=2)
    lease = await store.grant(name, "w")
    await store.release(lease.external_id, "failed")
    lease = await store.grant(name, "w")
    assert lease.attempts == 1
    await store.release(lease.external_id)
    lease = await store.grant(name, "w")
    assert lease.attempts == 0
    await store.release(lease.external_id, "failed")
    assert (await store.batch_key(name, 0)).state == "free"


async def test_an_expired_lease_is_an_attempt(clocked: Store, fake_clock: FakeClock) -> None:
    await clocked.register("p", key_set_size=1, lease_seconds=10, max_attempts=2)
    for attempt in (1, 2):
        lease = await clocked.grant("p", "w")
        assert lease.attempts == attempt - 1
        fake_clock.advance(11)
    with pytest.raises(AllQuarantined):
        await clocked.grant("p", "w")
    assert (await clocked.batch_key("p", 0)).state == "quarantined"


async def test_all_quarantined_stops_rotate_workers(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=2, max_attempts=1)
    first = await store.grant(name, "w")
    second = await store.grant(name, "w")
    await store.release(first.external_id, "failed")
    with pytest.raises(NoFreeKey):  # one still held: it may yet come back
        await store.grant(name, "w")
    await store.release(second.external_id, "failed")
    with pytest.raises(AllQuarantined):
        await store.grant(name, "w")
    # A rotate pass in which nothing was done does not complete.
    current = (await store.process(name)).pass_
    assert current is not None
    assert (current.number, current.complete, current.keys_quarantined) == (1, False, 2)


async def test_a_once_pass_completes_with_its_poison_slice_quarantined(
    store: Store, new_name
) -> None:
    name = new_name()
    await store.register(name, key_set_size=3, mode="once", max_attempts=1)
    leases = [await store.grant(name, "w") for _ in range(3)]
    await store.release(leases[0].external_id)
    await store.release(leases[1].external_id, "failed")
    await store.release(leases[2].external_id)
    with pytest.raises(PassComplete):
        await store.grant(name, "w")
    current = (await store.process(name)).pass_
    assert current is not None
    assert (current.keys_done, current.keys_quarantined, current.complete) == (2, 1, True)
    # Retrying the poison slice reopens the pass until it is done again.
    retried = await store.retry_key(name, leases[1].key)
    assert (retried.state, retried.attempts) == ("free", 0)
    assert "retried" in await _types(store, name)
    reopened = (await store.process(name)).pass_
    assert reopened is not None
    assert not reopened.complete
    redo = await store.grant(name, "w")
    assert redo.key == leases[1].key
    await store.release(redo.external_id)
    done = (await store.process(name)).pass_
    assert done is not None
    assert (done.keys_done, done.keys_quarantined, done.complete) == (3, 0, True)


async def test_backoff_holds_a_failed_key_back_doubling(
    clocked: Store, fake_clock: FakeClock
) -> None:
    await clocked.register("p", key_set_size=1, retry_backoff_seconds=10)
    lease = await clocked.grant("p", "w")
    released = await clocked.release(lease.external_id, "failed")
    assert released.state == "backoff"
    assert released.retry_at == utc(START_US + 10_000_000)
    with pytest.raises(NoFreeKey) as busy:
        await clocked.grant("p", "w")
    assert busy.value.retry_after_us == 10_000_000  # the backoff's end, not a lease's
    assert (await clocked.batch_key("p", 0)).state == "backoff"
    fake_clock.advance(10)
    lease = await clocked.grant("p", "w")
    await clocked.release(lease.external_id, "failed")
    with pytest.raises(NoFreeKey) as busy:
        await clocked.grant("p", "w")
    assert busy.value.retry_after_us == 20_000_000  # attempts 2: twice as long
    fake_clock.advance(20)
    assert (await clocked.grant("p", "w")).attempts == 2


async def test_a_waiting_grant_wakes_when_a_backoff_ends(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=1, retry_backoff_seconds=1)
    lease = await store.grant(name, "w")
    await store.release(lease.external_id, "failed")
    with anyio.fail_after(5):
        again = await store.grant(name, "w", wait_seconds=5)
    assert (again.key, again.attempts) == (0, 1)


async def test_starting_a_pass_lifts_quarantine_and_backoff_and_resets_attempts(
    store: Store, new_name
) -> None:
    name = new_name()
    await store.register(name, key_set_size=3, mode="once", max_attempts=1,
                         retry_backoff_seconds=3600)  # fmt: skip
    done = await store.grant(name, "w")
    await store.release(done.external_id)
    poisoned = await store.grant(name, "w")
    await store.release(poisoned.external_id, "failed")
    third = await store.grant(name, "w")
    await store.release(third.external_id)
    with pytest.raises(PassComplete):
        await store.grant(name, "w")
    process = await store.start_pass(name)
    assert process.pass_ is not None
    assert (process.pass_.number, process.pass_.keys_done) == (2, 0)
    assert process.pass_.keys_quarantined == 0
    states = {k.key: (k.state, k.attempts) for k in await store.batch_keys(name)}
    assert states == {0: ("free", 0), 1: ("free", 0), 2: ("free", 0)}
    # Least recently completed first: the never-completed poison slice leads.
    assert (await store.grant(name, "w")).key == poisoned.key
    assert (await store.pass_info(name, 1)).keys_quarantined == 1
    assert "pass-started" in await _types(store, name)


async def test_checkpoints_follow_the_key(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=1)
    lease = await store.grant(name, "w")
    assert lease.checkpoint is None
    await store.renew(lease.external_id, checkpoint="row 1200")
    assert (await store.batch_key(name, 0)).checkpoint == "row 1200"
    assert "checkpoint" not in (await store.batch_keys(name))[0].to_json()
    await store.release(lease.external_id, "failed")  # a failed end keeps it
    lease = await store.grant(name, "w")
    assert lease.checkpoint == "row 1200"
    await store.renew(lease.external_id, checkpoint=None)  # null clears
    assert (await store.batch_key(name, 0)).checkpoint is None
    await store.renew(lease.external_id, checkpoint="row 2400")
    await store.release(lease.external_id)  # a completed release clears it
    lease = await store.grant(name, "w")
    assert lease.checkpoint is None
    with pytest.raises(InvalidField):
        await store.renew(lease.external_id, checkpoint="x" * 4097)
    await store.renew(lease.external_id, checkpoint="é" * 2048)  # 4096 bytes exactly
    await store.release(lease.external_id, "failed")
    # An ended lease's renew stores nothing.
    with pytest.raises(LeaseGone):
        await store.renew(lease.external_id, checkpoint="late")
    assert (await store.batch_key(name, 0)).checkpoint == "é" * 2048


async def test_a_request_id_answers_the_same_lease_while_it_lives(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=3)
    first = await store.grant(name, "w", request_id="job-7/attempt-1")
    assert not first.replayed
    again = await store.grant(name, "w", request_id="job-7/attempt-1")
    assert again.replayed
    assert (again.external_id, again.key, again.fencing_token) == (
        first.external_id,
        first.key,
        first.fencing_token,
    )
    other = await store.grant(name, "w", request_id="job-8")
    assert other.key != first.key
    await store.release(first.external_id)
    # Ended, it answers its end (tests/test_request_memory.py), never a second key.
    with pytest.raises(LeaseGone) as gone:
        await store.grant(name, "w", request_id="job-7/attempt-1")
    assert gone.value.external_id == first.external_id
    with pytest.raises(InvalidField):
        await store.grant(name, "w", request_id="")
    with pytest.raises(InvalidField):
        await store.grant(name, "w", request_id="x" * 129)


async def test_keys_and_passes_outside_the_process_are_unknown(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=2)
    with pytest.raises(UnknownKey):
        await store.batch_key(name, 2)
    with pytest.raises(UnknownKey):
        await store.retry_key(name, 5)
    with pytest.raises(UnknownPass):
        await store.pass_info(name, 2)
    assert (await store.pass_info(name, 1)).number == 1


async def test_a_pass_wait_is_woken_by_the_completing_release(
    store: Store, new_name: Callable[[], str]
) -> None:
    name = new_name()
    await store.register(name, key_set_size=1, mode="once")
    lease = await store.grant(name, "w")
    result = {}
    answered = anyio.Event()

    async def wait() -> None:
        result["pass"] = await store.pass_info(name, 1, wait_seconds=10)
        answered.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait)
        await anyio.sleep(0.2)
        assert "pass" not in result
        with anyio.fail_after(2):
            await store.release(lease.external_id)
            await answered.wait()
    assert result["pass"].complete


async def test_the_last_100_passes_stay_readable(clocked: Store) -> None:
    await clocked.register("p", key_set_size=1)
    for _ in range(105):
        await clocked.start_pass("p")
    current = (await clocked.process("p")).pass_
    assert current is not None
    assert current.number == 106
    assert (await clocked.pass_info("p", 6)).number == 6
    with pytest.raises(UnknownPass):
        await clocked.pass_info("p", 5)
