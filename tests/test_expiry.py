"""Lease expiry by Redis's clock: on fakeredis with a controlled TIME, and once on real Valkey."""

from __future__ import annotations

from datetime import timedelta

import anyio
import fakeredis
import pytest

from coordinator.errors import LeaseGone, NoFreeKey
from coordinator.models import epoch_us
from coordinator.store import Store

pytestmark = pytest.mark.anyio

START_US = 1_800_000_000_000_000  # a whole second, far from float rounding trouble
TOKEN_EPOCH_US = 1_767_225_600_000_000  # grant.lua: tokens count microseconds from 2026-01-01


def next_token(previous, started_us):
    """The token grant.lua issues after `previous`, at the Redis TIME `started_us`."""
    return max(previous + 1, started_us - TOKEN_EPOCH_US)


def set_us(clock, us):
    """Put fakeredis's TIME at exactly `us` microseconds since the epoch."""
    clock.now = us / 1_000_000


@pytest.fixture
async def fake(fake_clock, prefix):
    """A Store on a fresh fakeredis server whose TIME the test moves; clock at START_US."""
    set_us(fake_clock, START_US)
    client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with client:
        yield Store(client, prefix=prefix), client


async def test_fake_clock_drives_script_time(fake, fake_clock):
    store, _ = fake
    await store.register("p", key_set_size=1, lease_seconds=10)
    granted = await store.grant("p", "w")
    assert epoch_us(granted.started_at) == START_US
    assert epoch_us(granted.expires_at) == START_US + 10_000_000
    assert granted.fencing_token == START_US - TOKEN_EPOCH_US


async def test_lease_expires_exactly_when_time_passes_expires_at(fake, fake_clock):
    store, _ = fake
    await store.register("p", key_set_size=1, lease_seconds=10)
    old = await store.grant("p", "w")
    expires = epoch_us(old.expires_at)

    set_us(fake_clock, expires - 1)
    [key] = await store.batch_keys("p")
    assert key.held
    assert key.external_id == old.external_id
    with pytest.raises(NoFreeKey) as caught:
        await store.grant("p", "w2")
    assert caught.value.retry_after_us == 1
    assert caught.value.retry_after_seconds == 1

    set_us(fake_clock, expires + 1)
    [key] = await store.batch_keys("p")
    assert not key.held
    assert key.external_id is None
    assert key.fencing_token is None
    assert key.last_completed_at is None

    new = await store.grant("p", "w2")
    assert new.key == old.key
    assert new.fencing_token > old.fencing_token
    assert new.fencing_token == next_token(old.fencing_token, expires + 1)
    assert new.external_id != old.external_id
    assert epoch_us(new.started_at) == expires + 1
    with pytest.raises(LeaseGone):
        await store.renew(old.external_id)
    with pytest.raises(LeaseGone):
        await store.release(old.external_id)
    # The new holder is unaffected by the old one's attempts.
    [key] = await store.batch_keys("p")
    assert key.external_id == new.external_id
    assert (await store.release(new.external_id)).key == 0


@pytest.mark.parametrize("operation", ["inspect", "grant", "renew", "release"])
async def test_every_script_agrees_a_lease_has_ended_at_expires_at(fake, fake_clock, operation):
    """The scripts share one rule (ended once TIME >= expires_us), so none sees it differently."""
    store, _ = fake
    await store.register("p", key_set_size=1, lease_seconds=10)
    old = await store.grant("p", "w")
    set_us(fake_clock, epoch_us(old.expires_at))
    if operation == "inspect":
        [key] = await store.batch_keys("p")
        assert not key.held
    elif operation == "grant":
        new = await store.grant("p", "w2")
        assert new.key == 0
        assert old.fencing_token == START_US - TOKEN_EPOCH_US
        assert new.fencing_token == epoch_us(old.expires_at) - TOKEN_EPOCH_US > old.fencing_token
    elif operation == "renew":
        with pytest.raises(LeaseGone):
            await store.renew(old.external_id)
    else:
        with pytest.raises(LeaseGone):
            await store.release(old.external_id)
        [key] = await store.batch_keys("p")
        assert key.last_completed_at is None  # too late to count as completed


async def test_renew_before_expiry_moves_the_deadline(fake, fake_clock):
    store, _ = fake
    await store.register("p", key_set_size=1, lease_seconds=10)
    lease = await store.grant("p", "w")
    set_us(fake_clock, epoch_us(lease.expires_at) - 1)
    renewed = await store.renew(lease.external_id)
    assert epoch_us(renewed.expires_at) == epoch_us(lease.expires_at) - 1 + 10_000_000
    set_us(fake_clock, epoch_us(lease.expires_at) + 5_000_000)
    [key] = await store.batch_keys("p")
    assert key.held
    assert key.expires_at == renewed.expires_at
    with pytest.raises(NoFreeKey):
        await store.grant("p", "w2")


async def test_expired_lease_cannot_be_renewed_or_released(fake, fake_clock):
    store, _ = fake
    await store.register("p", key_set_size=2, lease_seconds=10)
    a = await store.grant("p", "a")
    b = await store.grant("p", "b")
    set_us(fake_clock, epoch_us(a.expires_at) + 1)
    with pytest.raises(LeaseGone):
        await store.renew(a.external_id)
    with pytest.raises(LeaseGone):
        await store.release(b.external_id)  # completed by default, but too late: not stamped
    keys = await store.batch_keys("p")
    assert not any(k.held for k in keys)
    assert all(k.last_completed_at is None for k in keys)
    # Ended once, gone for good (a second attempt does not become "unknown").
    with pytest.raises(LeaseGone):
        await store.renew(a.external_id)
    with pytest.raises(LeaseGone):
        await store.release(b.external_id)
    # Both keep their never-completed places: 0 first, then 1.
    assert [(await store.grant("p", "c")).key for _ in range(2)] == [0, 1]


async def test_grant_reclaims_at_most_16_expired_leases_but_succeeds(fake, fake_clock):
    store, client = fake
    name, size = "big", 40
    await store.register(name, key_set_size=size, lease_seconds=10)
    tokens = []
    for i in range(size):
        lease = await store.grant(name, "w")
        assert lease.key == i
        assert lease.fencing_token == next_token(
            tokens[-1] if tokens else 0, epoch_us(lease.started_at)
        )
        tokens.append(lease.fencing_token)
        fake_clock.advance(0.001)  # expiry order follows key order
    with pytest.raises(NoFreeKey):
        await store.grant(name, "w")
    held = store.keys.process(name).held
    free = store.keys.process(name).free
    fence = store.keys.process(name).fence
    assert await client.zcard(held) == size
    assert await client.get(fence) == str(tokens[-1])  # the refusal issued no token

    set_us(fake_clock, START_US + 3600 * 1_000_000)
    granted = await store.grant(name, "late")
    assert granted.key == 0  # the stalest expired key
    assert granted.fencing_token == START_US + 3600 * 1_000_000 - TOKEN_EPOCH_US > tokens[-1]
    # 16 expired leases went back to the free set; one of them was granted again.
    assert await client.zcard(free) == 15
    assert await client.zcard(held) == size - 16 + 1
    # Unreclaimed expired leases still count as free for readers.
    keys = await store.batch_keys(name)
    assert [k.key for k in keys if k.held] == [0]
    # Repeated grants drain the rest, in key order, and never fail while keys are expired.
    following = [(await store.grant(name, "late")).key for _ in range(size - 1)]
    assert following == list(range(1, size))
    with pytest.raises(NoFreeKey):
        await store.grant(name, "late")


async def test_failed_release_and_expiry_keep_the_order_position(fake, fake_clock):
    store, _ = fake
    await store.register("p", key_set_size=3, lease_seconds=10)
    # Complete every key once, in order 0, 1, 2 (0 is then the stalest).
    for expected in range(3):
        lease = await store.grant("p", "w")
        assert lease.key == expected
        fake_clock.advance(0.001)
        await store.release(lease.external_id, "completed")
        fake_clock.advance(0.001)
    completions = {k.key: k.last_completed_at for k in await store.batch_keys("p")}
    assert completions[0] < completions[1] < completions[2]

    # Failed: key 0 stays the stalest.
    lease = await store.grant("p", "w")
    assert lease.key == 0
    fake_clock.advance(1)
    released = await store.release(lease.external_id, "failed")
    assert released.last_completed_at == completions[0]
    # Expired: key 0 still stays the stalest, and is reclaimed with a higher token.
    lease = await store.grant("p", "w")
    assert lease.key == 0
    fake_clock.advance(11)
    again = await store.grant("p", "w")
    assert again.key == 0
    assert again.fencing_token > lease.fencing_token
    assert again.fencing_token == next_token(lease.fencing_token, epoch_us(again.started_at))
    assert again.last_completed_at == completions[0]
    # Completed now: 0 goes to the back, 1 is next, and 1's expiry keeps it next.
    fake_clock.advance(0.001)
    await store.release(again.external_id, "completed")
    lease = await store.grant("p", "w")
    assert lease.key == 1
    fake_clock.advance(11)
    assert (await store.grant("p", "w")).key == 1
    assert (await store.grant("p", "w")).key == 2
    assert (await store.grant("p", "w")).key == 0
    final = {k.key: k.last_completed_at for k in await store.batch_keys("p")}
    assert final[1] == completions[1]
    assert final[2] == completions[2]
    assert final[0] > completions[2]


async def test_expired_never_completed_key_goes_before_fresh_keys(fake, fake_clock):
    store, _ = fake
    await store.register("p", key_set_size=5, lease_seconds=10)
    leases = [await store.grant("p", "w") for _ in range(3)]  # keys 0, 1, 2
    await store.release(leases[0].external_id, "completed")
    await store.release(leases[2].external_id, "failed")
    fake_clock.advance(10.5)  # key 1 expires
    # 1 and 2 were never completed: they come before fresh 3, 4; completed 0 comes last.
    assert [(await store.grant("p", "w")).key for _ in range(5)] == [1, 2, 3, 4, 0]


async def test_retry_after_counts_down_with_redis_time(fake, fake_clock):
    store, _ = fake
    await store.register("p", key_set_size=2, lease_seconds=100)
    await store.grant("p", "w")
    fake_clock.advance(30)
    await store.grant("p", "w")
    with pytest.raises(NoFreeKey) as caught:
        await store.grant("p", "w")
    assert caught.value.retry_after_us == 70_000_000
    assert caught.value.retry_after_seconds == 10  # at most 10: a release may come sooner
    fake_clock.advance(62.5)
    with pytest.raises(NoFreeKey) as caught:
        await store.grant("p", "w")
    assert caught.value.retry_after_us == 7_500_000
    assert caught.value.retry_after_seconds == 8
    fake_clock.advance(7)
    with pytest.raises(NoFreeKey) as caught:
        await store.grant("p", "w")
    assert caught.value.retry_after_us == 500_000
    assert caught.value.retry_after_seconds == 1


async def test_real_expiry_on_valkey(valkey_redis, prefix):
    """The one test that waits: a 1 s lease on the real server, reclaimed by the next grant."""
    store = Store(valkey_redis, prefix=prefix)
    await store.register("p", key_set_size=1, lease_seconds=1)
    old = await store.grant("p", "w")
    assert old.expires_at - old.started_at == timedelta(seconds=1)
    with pytest.raises(NoFreeKey) as caught:
        await store.grant("p", "w2")
    assert caught.value.retry_after_seconds == 1

    await anyio.sleep(1.1)

    [key] = await store.batch_keys("p")
    assert not key.held
    new = await store.grant("p", "w2")
    assert new.key == 0
    assert new.fencing_token > old.fencing_token
    assert new.fencing_token == next_token(old.fencing_token, epoch_us(new.started_at))
    assert new.started_at > old.expires_at
    with pytest.raises(LeaseGone):
        await store.renew(old.external_id)
    with pytest.raises(LeaseGone):
        await store.release(old.external_id)
    assert (await store.release(new.external_id)).fencing_token == new.fencing_token
