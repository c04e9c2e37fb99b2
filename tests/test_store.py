"""The store on both backends (real Valkey and fakeredis[lua]): order, fencing, errors."""

from __future__ import annotations

import math
import time
from collections import Counter
from datetime import timedelta

import pytest

from coordinator import lease_id
from coordinator.errors import (
    InvalidField,
    LeaseGone,
    NoFreeKey,
    ProcessExists,
    UnknownLease,
    UnknownProcess,
)
from coordinator.models import Process
from coordinator.store import Limits

pytestmark = pytest.mark.anyio

TOKEN_EPOCH_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, the origin of token clocks


async def snapshot(redis, prefix):
    """Every key under the prefix with its full value, to prove nothing changed."""
    state = {}
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        kind = await redis.type(key)
        if kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            value = await redis.get(key)
        else:
            value = kind
        state[key] = (kind, value)
    return state


async def prefix_keys(redis, prefix):
    return [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]


async def test_fresh_process_hands_out_keys_in_order(store, new_name):
    name = new_name()
    await store.register(name, key_set_size=5)
    granted = [await store.grant(name, f"m{i}") for i in range(5)]
    assert [k.key for k in granted] == [0, 1, 2, 3, 4]
    assert all(k.last_completed_at is None for k in granted)
    assert [k.machine for k in granted] == ["m0", "m1", "m2", "m3", "m4"]
    for k in granted:
        assert k.expires_at - k.started_at == timedelta(hours=1)
        assert k.external_id == str(lease_id.compose(name, k.fencing_token))
    with pytest.raises(NoFreeKey):
        await store.grant(name, "late")


async def test_register_returns_process_and_defaults(store, new_name):
    name = new_name()
    assert await store.register(name) == Process(name, 10, 3600)
    other = new_name()
    assert await store.register(other, 3, 60) == Process(other, 3, 60)
    assert await store.process(other) == Process(other, 3, 60)
    listed = await store.processes()
    assert listed == sorted(
        [Process(name, 10, 3600), Process(other, 3, 60)], key=lambda p: p.process_name
    )
    keys = await store.batch_keys(name)
    assert [k.key for k in keys] == list(range(10))
    assert not any(k.held for k in keys)
    assert all(k.last_completed_at is None for k in keys)


async def test_duplicate_registration_is_refused_and_changes_nothing(store, new_name):
    name = new_name()
    await store.register(name, 4, 30)
    await store.grant(name, "w")
    before = await store.batch_keys(name)
    with pytest.raises(ProcessExists):
        await store.register(name, 9, 99)
    assert await store.process(name) == Process(name, 4, 30)
    assert await store.batch_keys(name) == before


async def test_730_cycles_visit_every_key_73_times(store, new_name):
    name = new_name()
    await store.register(name, key_set_size=10)
    sequence = []
    for _ in range(730):
        granted = await store.grant(name, "worker")
        sequence.append(granted.key)
        released = await store.release(granted.external_id)
        assert released.key == granted.key
    assert Counter(sequence) == dict.fromkeys(range(10), 73)
    assert sequence == [i % 10 for i in range(730)]
    keys = await store.batch_keys(name)
    completions = [k.last_completed_at for k in keys]
    assert all(c is not None for c in completions)
    # The last round completed the keys in order, so completion times increase with the key.
    assert completions == sorted(completions)
    assert len(set(completions)) == 10


async def test_failed_release_keeps_the_keys_place(store, new_name):
    name = new_name()
    await store.register(name, key_set_size=3)
    # Never-completed key 0 fails: it is still first in line, before fresh key 1.
    first = await store.grant(name, "w")
    failed = await store.release(first.external_id, "failed")
    assert failed.key == 0
    assert failed.last_completed_at is None
    again = await store.grant(name, "w")
    assert again.key == 0
    await store.release(again.external_id)
    # Complete 1 and 2 too, so the order by completion is 0, 1, 2.
    for expected in (1, 2):
        k = await store.grant(name, "w")
        assert k.key == expected
        await store.release(k.external_id, "completed")
    before = {k.key: k.last_completed_at for k in await store.batch_keys(name)}
    assert before[0] < before[1] < before[2]
    # Key 0 is stalest; a failed release keeps its completion time and its place.
    k = await store.grant(name, "w")
    assert k.key == 0
    released = await store.release(k.external_id, "failed")
    assert released.last_completed_at == before[0]
    assert (await store.grant(name, "w")).key == 0
    after = {k.key: k.last_completed_at for k in await store.batch_keys(name)}
    assert after == before
    # A completed release sends it to the back of the line.
    assert (await store.grant(name, "w")).key == 1


async def test_release_response_fields(store, new_name):
    name = new_name()
    await store.register(name, key_set_size=2)
    granted = await store.grant(name, "machine-a")
    released = await store.release(granted.external_id)
    assert released.key == granted.key
    assert released.external_id == granted.external_id
    assert released.machine == "machine-a"
    assert released.started_at == granted.started_at
    assert released.fencing_token == granted.fencing_token
    assert released.expires_at is None
    assert released.last_completed_at is not None
    assert released.last_completed_at >= granted.started_at
    listed = (await store.batch_keys(name))[granted.key]
    assert listed.last_completed_at == released.last_completed_at
    assert not listed.held


async def test_fencing_tokens_strictly_increase_across_reregistration(store, redis, new_name):
    name = new_name()
    fence = store.keys.process(name).fence
    tokens = []
    for _round in range(3):
        await store.register(name, key_set_size=3)
        for _ in range(5):
            granted = await store.grant(name, "w")
            tokens.append(granted.fencing_token)
            await store.release(granted.external_id, "failed")
        await store.grant(name, "w-held")
        held = [k for k in await store.batch_keys(name) if k.held]
        tokens.extend(k.fencing_token for k in held)
        await store.unregister(name)
        # The fence outlives the process and holds the name's last token. (Tokens have a
        # clock floor, so growing tokens alone would not prove the fence was kept.)
        assert await redis.get(fence) == str(tokens[-1])
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)
    assert tokens[0] >= 1
    # A fresh registration keeps counting from where the name left off.
    await store.register(name, key_set_size=1)
    assert (await store.grant(name, "w")).fencing_token > tokens[-1]


async def test_fencing_tokens_are_per_process_name(store, redis, new_name):
    a, b = new_name(), new_name()
    await store.register(a, 5)
    await store.register(b, 5)
    tokens = [(await store.grant(a, "w")).fencing_token for _ in range(3)]
    assert tokens[0] < tokens[1] < tokens[2]
    # Put a's fence far ahead of the clock: a's next token continues from it exactly...
    ahead = tokens[-1] + 10**12  # about 11.6 days of microseconds
    await redis.set(store.keys.process(a).fence, str(ahead))
    assert (await store.grant(a, "w")).fencing_token == ahead + 1
    assert (await store.grant(a, "w")).fencing_token == ahead + 2
    # ...while b, whose fence is its own and still empty, gets the clock's reading.
    before_us = math.floor(time.time() * 1_000_000)
    first_b = (await store.grant(b, "w")).fencing_token
    after_us = math.ceil(time.time() * 1_000_000)
    assert before_us - TOKEN_EPOCH_US <= first_b <= after_us - TOKEN_EPOCH_US
    assert await redis.get(store.keys.process(b).fence) == str(first_b)
    assert await redis.get(store.keys.process(a).fence) == str(ahead + 2)


async def test_no_free_key_retry_after_within_lease(store, new_name):
    name = new_name()
    await store.register(name, key_set_size=3, lease_seconds=30)
    await store.grant(name, "w")
    await store.grant(name, "w", lease_seconds=20)
    await store.grant(name, "w", lease_seconds=8)
    with pytest.raises(NoFreeKey) as caught:
        await store.grant(name, "w")
    error = caught.value
    assert 0 < error.retry_after_us <= 8 * 1_000_000
    assert error.retry_after_seconds == 8  # rounded up: a few µs have passed at most
    assert error.code == "no_free_key"


async def test_lease_seconds_override_on_grant_and_renew(store, new_name):
    name = new_name()
    await store.register(name, key_set_size=2, lease_seconds=100)
    granted = await store.grant(name, "w", lease_seconds=7)
    assert granted.expires_at - granted.started_at == timedelta(seconds=7)
    renewed = await store.renew(granted.external_id, lease_seconds=50)
    assert renewed.started_at == granted.started_at
    assert renewed.fencing_token == granted.fencing_token
    assert renewed.machine == "w"
    assert renewed.key == granted.key
    first_expiry = renewed.expires_at
    assert first_expiry > granted.expires_at
    # Without lease_seconds, a renewal uses the lease's own (last) length.
    again = await store.renew(granted.external_id)
    assert again.expires_at >= first_expiry
    assert again.expires_at - timedelta(seconds=50) >= granted.started_at
    listed = (await store.batch_keys(name))[granted.key]
    assert listed.expires_at == again.expires_at
    assert listed.external_id == granted.external_id


async def test_ended_leases_are_gone(store, new_name):
    name = new_name()
    await store.register(name, key_set_size=2)
    granted = await store.grant(name, "w")
    await store.release(granted.external_id)
    with pytest.raises(LeaseGone):
        await store.release(granted.external_id)
    with pytest.raises(LeaseGone):
        await store.renew(granted.external_id)
    with pytest.raises(LeaseGone):
        await store.release(granted.external_id, "failed")
    # The failed attempts changed nothing: one completed key, nothing held.
    keys = await store.batch_keys(name)
    assert not any(k.held for k in keys)
    assert keys[granted.key].last_completed_at is not None


async def test_never_granted_leases_are_unknown(store, redis, new_name):
    name = new_name()
    await store.register(name, key_set_size=2)
    granted = await store.grant(name, "w")
    # Never granted means above the fence, which holds the last token issued.
    assert await redis.get(store.keys.process(name).fence) == str(granted.fencing_token)
    never = [
        str(lease_id.compose(name, granted.fencing_token + 1)),
        str(lease_id.compose(name, granted.fencing_token + 10**9)),
        str(lease_id.compose(name, lease_id.MAX_TOKEN)),
        str(lease_id.compose(new_name(), 1)),  # a name never registered
        "00000000-0000-4000-8000-000000000000",
        "b608a696-7197-42b1-bbbd-cabb962cbaad",
        "not-a-uuid",
        "",
    ]
    for external_id in never:
        with pytest.raises(UnknownLease):
            await store.renew(external_id)
        with pytest.raises(UnknownLease):
            await store.release(external_id)
    # The real lease is untouched by all of that.
    assert (await store.renew(granted.external_id)).key == granted.key


async def test_unregister_ends_all_leases(store, new_name):
    name = new_name()
    await store.register(name, key_set_size=4, lease_seconds=100)
    leases = [await store.grant(name, f"w{i}") for i in range(3)]
    removed = await store.unregister(name)
    assert removed == Process(name, 4, 100)
    for lease in leases:
        with pytest.raises(LeaseGone):
            await store.renew(lease.external_id)
        with pytest.raises(LeaseGone):
            await store.release(lease.external_id)
    with pytest.raises(UnknownProcess):
        await store.batch_keys(name)
    with pytest.raises(UnknownProcess):
        await store.grant(name, "w")
    with pytest.raises(UnknownProcess):
        await store.unregister(name)
    with pytest.raises(UnknownProcess):
        await store.process(name)
    assert name not in [p.process_name for p in await store.processes()]
    # Re-registering starts a clean key table; the old ids stay gone.
    await store.register(name, key_set_size=2)
    keys = await store.batch_keys(name)
    assert len(keys) == 2
    assert not any(k.held for k in keys)
    for lease in leases:
        with pytest.raises(LeaseGone):
            await store.release(lease.external_id)
    assert (await store.grant(name, "w")).key == 0


async def test_unregister_removes_every_process_key(store, redis, prefix, new_name):
    name = new_name()
    await store.register(name, key_set_size=3)
    for _ in range(2):
        await store.release((await store.grant(name, "w")).external_id)
    await store.grant(name, "w")
    await store.unregister(name)
    remaining = {k.removeprefix(prefix) for k in await prefix_keys(redis, prefix)}
    # Only the fence counter (tokens keep growing) stays for good; the process's history (its
    # last entry says it was deleted) and the id its leases resolve by (410, not 404) expire.
    retired = f":{{registry}}:retired:{lease_id.process_id(name):016x}"
    assert remaining == {retired, f":{{{name}}}:fence", f":{{{name}}}:events"}
    assert await redis.ttl(f"{prefix}:{{{name}}}:fence") == -1
    week = Limits().deleted_history_seconds
    for key in (prefix + retired, f"{prefix}:{{{name}}}:events"):
        assert week - 5 <= await redis.ttl(key) <= week


async def test_million_keys_register_in_constant_space(store, redis, prefix, new_name):
    name = new_name()
    process = await store.register(name, key_set_size=1_000_000)
    assert process.key_set_size == 1_000_000
    assert (await store.process(name)).key_set_size == 1_000_000
    # Constant space: the registry, the id, the meta hash and the history's first entry.
    assert len(await prefix_keys(redis, prefix)) <= 4
    granted = await store.grant(name, "w")
    assert granted.key == 0
    assert (await store.grant(name, "w")).key == 1
    keys = await prefix_keys(redis, prefix)
    assert len(keys) <= 8
    for key in keys:
        kind = await redis.type(key)
        if kind == "hash":
            # meta's fields (size, lease, the pass and its counters) and two keys' records.
            assert await redis.hlen(key) <= 10
        elif kind == "zset":
            assert await redis.zcard(key) <= 2
    # A completed key goes to the back of a million-long line.
    await store.release(granted.external_id)
    assert (await store.grant(name, "w")).key == 2


async def test_million_keys_is_the_default_maximum(store, new_name):
    with pytest.raises(InvalidField):
        await store.register(new_name(), key_set_size=1_000_001)


async def test_invalid_arguments_raise_and_change_nothing(store, redis, prefix, new_name):
    name = new_name()
    await store.register(name, key_set_size=3, lease_seconds=60)
    granted = await store.grant(name, "w")
    before = await snapshot(redis, prefix)
    assert before

    bad_names = ["", "a b", "a/b", "{x}", "x*", "-lead", ".lead", "é", "a\n", "x" * 129, 7, None]
    for bad in bad_names:
        with pytest.raises(InvalidField) as caught:
            await store.register(bad)
        assert caught.value.field == "process_name"
        with pytest.raises(InvalidField):
            await store.grant(bad, "w")
        with pytest.raises(InvalidField):
            await store.batch_keys(bad)
        with pytest.raises(InvalidField):
            await store.unregister(bad)
    for size in (0, -1, 1_000_001, True, 1.5, "10"):
        with pytest.raises(InvalidField) as caught:
            await store.register(new_name(), key_set_size=size)
        assert caught.value.field == "key_set_size"
    for lease in (0, -5, 86_401, True, 2.5, "60"):
        with pytest.raises(InvalidField) as caught:
            await store.register(new_name(), lease_seconds=lease)
        assert caught.value.field == "lease_seconds"
        with pytest.raises(InvalidField):
            await store.grant(name, "w", lease_seconds=lease)
        with pytest.raises(InvalidField):
            await store.renew(granted.external_id, lease_seconds=lease)
    for machine in ("", "m" * 257, 5, None):
        with pytest.raises(InvalidField) as caught:
            await store.grant(name, machine)
        assert caught.value.field == "machine"
    for outcome in ("done", "", "COMPLETED", None):
        with pytest.raises(InvalidField) as caught:
            await store.release(granted.external_id, outcome)
        assert caught.value.field == "outcome"

    assert await snapshot(redis, prefix) == before
    # And the lease is still live and in its place.
    assert (await store.release(granted.external_id)).key == granted.key


async def test_boundary_values_are_accepted(store, new_name):
    name = "x" * 128
    await store.register(name, key_set_size=1, lease_seconds=86_400)
    granted = await store.grant(name, "m" * 256, lease_seconds=1)
    assert granted.machine == "m" * 256
    renewed = await store.renew(granted.external_id, lease_seconds=86_400)
    assert renewed.expires_at - granted.started_at >= timedelta(days=1)
    odd = "A0._:-z"
    await store.register(odd, key_set_size=2)
    assert (await store.grant(odd, "w")).key == 0


async def test_machine_is_stored_as_given(store, new_name):
    name = new_name()
    await store.register(name, key_set_size=3)
    machines = ["a|b|c", "naïve ✓", "with\nnewline"]
    for machine in machines:
        await store.grant(name, machine)
    listed = await store.batch_keys(name)
    assert [k.machine for k in listed] == machines
    released = await store.release(listed[0].external_id)
    assert released.machine == "a|b|c"
