"""A run knows when to stop: `max_failed_keys` fails a `once` pass that quarantines too much.

When more keys than `max_failed_keys` are quarantined in a `once` pass, the pass completes as
failed: `pass.failed` is true (in the process, the pass resource and, once followed, its kept
record), the history records `pass-failed`, grants (waiting ones at once) answer 409
`pass_failed`, and a pass wait is woken. A new pass clears it. The option is refused on a
`rotate` process, whose passes never end for good. Store tests run on the real Valkey and on
fakeredis[lua].
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import fakeredis
import pytest

from coordinator.embedded import EmbeddedValkey
from coordinator.errors import InvalidField, LeaseGone, PassComplete, PassFailed
from coordinator.store import Store
from tests.conftest import FakeClock
from tests.test_waiters import replicas, until

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
KEYS = "/api/v1/process/batch_keys"


@pytest.fixture
async def clocked(fake_clock: FakeClock, prefix: str) -> AsyncIterator[Store]:
    """A Store on a fresh fakeredis whose TIME the test moves (fake_clock.advance)."""
    fake_clock.now = 1_800_000_000.0
    client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with client:
        yield Store(client, prefix=prefix)


async def _types(store: Store, name: str) -> list[str]:
    return [e.type for e in await store.events(name, limit=1000)]


async def test_the_option_is_checked_and_echoed(store: Store, new_name) -> None:
    name = new_name()
    process = await store.register(name, key_set_size=4, mode="once", max_failed_keys=0)
    assert process.max_failed_keys == 0
    assert (await store.process(name)).max_failed_keys == 0
    assert (await store.process(name)).to_json()["max_failed_keys"] == 0
    plain = new_name()
    assert (await store.register(plain, key_set_size=4)).max_failed_keys is None
    assert (await store.process(plain)).max_failed_keys is None
    for refused in (
        {"mode": "rotate", "max_failed_keys": 1},  # a rotate pass never ends for good
        {"mode": "once", "max_failed_keys": 5},  # more than the keys
        {"mode": "once", "max_failed_keys": -1},
        {"mode": "once", "max_failed_keys": True},
    ):
        with pytest.raises(InvalidField, match="max_failed_keys"):
            await store.register(new_name(), key_set_size=4, **refused)
    # A direct caller of register.lua meets the same bounds.
    keys = store.keys.process(new_name()).of("register")
    for mode, value in (("rotate", "1"), ("once", "5"), ("once", "x")):
        reply = await store.scripts.call("register", keys, [4, 1000, 10, mode, 0, 0, value])
        assert reply == [6, "max_failed"]


async def test_a_pass_fails_when_more_keys_than_that_are_quarantined(
    store: Store, new_name
) -> None:
    name = new_name()
    await store.register(name, key_set_size=5, mode="once", max_attempts=1, max_failed_keys=1)
    held = await store.grant(name, "w")
    first = await store.grant(name, "w")
    await store.release(first.external_id, "failed")
    current = (await store.process(name)).pass_
    assert current is not None
    assert (current.keys_quarantined, current.complete, current.failed) == (1, False, False)
    assert (await store.grant(name, "w")).key not in {held.key, first.key}  # still working
    second = await store.grant(name, "w")
    released = await store.release(second.external_id, "fatal")
    assert released.state == "quarantined"
    current = (await store.process(name)).pass_
    assert current is not None
    assert (current.keys_quarantined, current.complete, current.failed) == (2, True, True)
    assert current.to_json()["failed"] is True
    types = await _types(store, name)
    assert types[-1] == "pass-failed"
    assert "pass-completed" not in types
    with pytest.raises(PassFailed) as refused:
        await store.grant(name, "w")
    assert isinstance(refused.value, PassComplete)  # whatever stops on a complete pass stops
    assert refused.value.code == "pass_failed"
    # A lease held when the pass failed is still its holder's to end.
    assert (await store.release(held.external_id)).state == "done"
    still = await store.pass_info(name, 1)
    assert (still.failed, still.keys_done) == (True, 1)


async def test_a_new_pass_clears_it_and_the_failed_pass_stays_failed(
    store: Store, new_name
) -> None:
    name = new_name()
    await store.register(name, key_set_size=2, mode="once", max_failed_keys=0)
    await store.release((await store.grant(name, "w")).external_id, "fatal")
    assert (await store.pass_info(name, 1)).failed
    process = await store.start_pass(name)
    assert process.pass_ is not None
    assert (process.pass_.number, process.pass_.failed, process.pass_.complete) == (2, False, False)
    kept = await store.pass_info(name, 1)
    assert (kept.failed, kept.complete, kept.keys_quarantined) == (True, True, 1)
    for _ in range(2):
        await store.release((await store.grant(name, "w")).external_id)
    await store.start_pass(name)
    done = await store.pass_info(name, 2)
    assert (done.complete, done.failed) == (True, False)
    assert not (await store.pass_info(name, 3)).failed


async def test_an_expiry_a_grant_reclaims_can_fail_the_pass(
    clocked: Store, fake_clock: FakeClock
) -> None:
    await clocked.register(
        "p", key_set_size=3, lease_seconds=10, mode="once", max_attempts=1, max_failed_keys=0
    )
    await clocked.grant("p", "w")
    fake_clock.advance(11)
    with pytest.raises(PassFailed):
        await clocked.grant("p", "w")
    current = (await clocked.process("p")).pass_
    assert current is not None
    assert current.failed


async def test_waiting_grants_and_pass_waits_are_answered_at_once(
    valkey: EmbeddedValkey, prefix: str
) -> None:
    async with replicas(valkey, prefix, 1) as (served,):
        client = served.http
        created = await client.post(
            API, json={"process_name": "p", "key_set_size": 2, "mode": "once", "max_failed_keys": 0}
        )
        assert created.status_code == 201, created.text
        assert (created.json()["max_failed_keys"], created.json()["pass"]["failed"]) == (0, False)
        held = [
            (await client.post(KEYS, json={"process_name": "p", "machine": "m"})).json()
            for _ in range(2)
        ]
        waiting = asyncio.ensure_future(
            client.post(
                KEYS, json={"process_name": "p", "machine": "w", "wait_seconds": 60}, timeout=70
            )
        )
        passing = asyncio.ensure_future(
            client.get(f"{API}/p/passes/1", params={"wait_seconds": 60}, timeout=70)
        )
        await until(lambda: served.store.waiters.waiting == 2)
        ended = await client.delete(f"{KEYS}/{held[0]['external_id']}", params={"outcome": "fatal"})
        assert ended.status_code == 200, ended.text
        # Far under the waits' 60 s, and generous for a loaded machine.
        with anyio.fail_after(20):
            granted, watched = await asyncio.gather(waiting, passing)
        assert granted.status_code == 409, granted.text
        assert granted.json()["code"] == "pass_failed"
        assert "Retry-After" not in granted.headers
        assert watched.status_code == 200, watched.text
        assert watched.json()["failed"] is True
        assert watched.json()["completed_at"] is not None
        again = await client.post(KEYS, json={"process_name": "p", "machine": "m"})
        assert (again.status_code, again.json()["code"]) == (409, "pass_failed")
        # The holder of the other key may still end its lease.
        late = await client.delete(f"{KEYS}/{held[1]['external_id']}")
        assert late.status_code == 200, late.text
        refused = await client.post(
            API, json={"process_name": "rotating", "mode": "rotate", "max_failed_keys": 0}
        )
        assert (refused.status_code, refused.json()["code"]) == (422, "invalid_field")
        assert "max_failed_keys" in refused.json()["detail"]


async def test_a_release_found_expired_can_fail_the_pass_too(
    clocked: Store, fake_clock: FakeClock
) -> None:
    await clocked.register(
        "p", key_set_size=2, lease_seconds=10, mode="once", max_attempts=1, max_failed_keys=0
    )
    lease = await clocked.grant("p", "w")
    fake_clock.advance(11)
    with pytest.raises(LeaseGone):
        await clocked.release(lease.external_id)
    assert (await clocked.pass_info("p", 1)).failed


async def test_a_reopened_pass_still_over_the_limit_ends_failed(store: Store, new_name) -> None:
    # A retry reopens a failed pass; if it then ends with more keys quarantined than allowed,
    # it ends failed again, not complete.
    name = new_name()
    await store.register(name, key_set_size=3, mode="once", max_attempts=1, max_failed_keys=0)
    leases = [await store.grant(name, "w") for _ in range(3)]
    await store.release(leases[0].external_id, "failed")  # over the limit: failed
    await store.release(leases[1].external_id, "failed")
    await store.retry_key(name, leases[0].key)
    reopened = await store.pass_info(name, 1)
    assert (reopened.complete, reopened.failed, reopened.keys_quarantined) == (False, False, 1)
    await store.release(leases[2].external_id)
    redo = await store.grant(name, "w")
    assert redo.key == leases[0].key
    await store.release(redo.external_id)
    ended = await store.pass_info(name, 1)
    assert (ended.complete, ended.failed, ended.keys_done) == (True, True, 2)
    assert (await _types(store, name)).count("pass-completed") == 0
    with pytest.raises(PassFailed):
        await store.grant(name, "w")


async def test_a_pass_started_by_an_older_script_is_not_failed(store: Store, new_name) -> None:
    # During a rolling deploy an older start_pass.lua, which knows nothing of `failed`, may
    # start the pass after a failed one: the new pass must not read as failed, nor end so.
    name = new_name()
    await store.register(name, key_set_size=1, mode="once", max_failed_keys=0)
    lease = await store.grant(name, "w")
    await store.release(lease.external_id, "fatal")
    assert (await store.pass_info(name, 1)).failed
    k = store.keys.process(name)
    now_us = str(int(float(".".join(map(str, await store.redis.time()))) * 1e6))
    # What start_pass.lua did before max_failed_keys: every field it wrote but `failed`.
    await store.redis.zrem(k.parked, "0")
    await store.redis.zadd(k.free, {"0": -1})
    await store.redis.hincrby(k.meta, "epoch", 1)
    started = {"pass": 2, "pass_started_us": now_us, "pass_completed_us": "", "done": 0, "qdone": 0}
    await store.redis.hset(k.meta, mapping=started)
    current = (await store.process(name)).pass_
    assert current is not None
    assert (current.number, current.failed, current.complete) == (2, False, False)
    await store.release((await store.grant(name, "w")).external_id)
    ended = await store.pass_info(name, 2)
    assert (ended.complete, ended.failed) == (True, False)
    with pytest.raises(PassComplete) as refused:
        await store.grant(name, "w")
    assert type(refused.value) is PassComplete


async def test_a_pass_an_older_release_left_incomplete_completes_at_the_next_grant(
    store: Store, new_name
) -> None:
    # A release.lua older than `parks` does not count the quarantine of a fatal key of a
    # process without options, so the last completion leaves the pass open with nothing left
    # to grant; the next grant completes it rather than answer busy for ever.
    name = new_name()
    await store.register(name, key_set_size=2, mode="once")
    first = await store.grant(name, "w")
    await store.release(first.external_id, "fatal")
    k = store.keys.process(name)
    await store.redis.hdel(k.meta, "parks")  # the older script reads no `parks`...
    await store.release((await store.grant(name, "w")).external_id)
    assert not (await store.pass_info(name, 1)).complete
    await store.redis.hset(k.meta, "parks", 1)  # ...the newer ones do
    with pytest.raises(PassComplete):
        await store.grant(name, "w")
    healed = await store.pass_info(name, 1)
    assert (healed.complete, healed.keys_done, healed.keys_quarantined) == (True, 1, 1)
