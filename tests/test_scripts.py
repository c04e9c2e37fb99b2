"""The Lua scripts: reloaded after SCRIPT FLUSH, keys under the prefix and one hash tag."""

from __future__ import annotations

import dataclasses
import re

import pytest
from redis.crc import key_slot

from coordinator import scripts
from coordinator.errors import LeaseGone
from coordinator.store import Store

pytestmark = pytest.mark.anyio


async def all_loaded(redis, store) -> list[bool]:
    shas = [script.sha for script in store.scripts._scripts.values()]
    assert len(shas) == len(scripts.NAMES)
    return list(await redis.script_exists(*shas))


async def test_every_operation_survives_a_script_flush(store, redis, new_name):
    name = new_name()

    async def flushed():
        await redis.script_flush()
        assert not any(await all_loaded(redis, store))

    await flushed()
    await store.register(name, key_set_size=3, lease_seconds=60)
    await flushed()
    granted = await store.grant(name, "w")
    assert granted.key == 0
    await flushed()
    renewed = await store.renew(granted.external_id, lease_seconds=120)
    assert renewed.fencing_token == granted.fencing_token
    await flushed()
    keys = await store.batch_keys(name)
    assert [k.key for k in keys] == [0, 1, 2]
    assert keys[0].external_id == granted.external_id
    await flushed()
    released = await store.release(granted.external_id)
    assert released.last_completed_at is not None
    await flushed()
    await store.check_ready()
    await flushed()
    second = await store.grant(name, "w")
    assert second.key == 1
    await flushed()
    assert (await store.unregister(name)).key_set_size == 3
    await flushed()
    with pytest.raises(LeaseGone):
        await store.release(second.external_id)


async def test_check_ready_reloads_flushed_scripts(store, redis):
    await store.check_ready()
    assert all(await all_loaded(redis, store))
    await redis.script_flush()
    assert await all_loaded(redis, store) == [False] * len(scripts.NAMES)
    await store.check_ready()
    assert await all_loaded(redis, store) == [True] * len(scripts.NAMES)


async def test_a_fresh_store_on_a_flushed_server_works(redis, prefix, new_name):
    """A second replica (its own Store) after a flush: both reload on their own."""
    first = Store(redis, prefix=prefix)
    second = Store(redis, prefix=prefix)
    name = new_name()
    await first.register(name, key_set_size=2)
    await redis.script_flush()
    lease = await second.grant(name, "w")
    await redis.script_flush()
    assert (await first.release(lease.external_id)).key == lease.key


async def test_check_ready_creates_no_keys(store, redis, prefix):
    await store.check_ready()
    assert [key async for key in redis.scan_iter(match=f"{prefix}*")] == []


async def full_cycle(store, name):
    await store.register(name, key_set_size=4, lease_seconds=60)
    first = await store.grant(name, "w1")
    await store.renew(first.external_id, lease_seconds=30)
    await store.release(first.external_id, "completed")
    second = await store.grant(name, "w2")
    await store.release(second.external_id, "failed")
    await store.grant(name, "w3")  # stays held
    await store.batch_keys(name)


async def test_every_key_is_under_the_prefix_with_the_process_hash_tag(store, redis, prefix):
    names = ["alpha", "beta.2", "gamma:x", "d-e_f"]
    for name in names:
        await full_cycle(store, name)
    found = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    assert found
    registry = {f"{prefix}:{{registry}}:processes", f"{prefix}:{{registry}}:pids"}
    assert registry <= set(found)
    slots_by_name: dict[str, set[int]] = {}
    for key in found:
        assert key.startswith(f"{prefix}:")
        if key in registry:
            continue
        match = re.fullmatch(re.escape(prefix) + r":\{([^{}]+)\}:[a-z]+", key)
        assert match, key
        assert match.group(1) in names
        slots_by_name.setdefault(match.group(1), set()).add(key_slot(key.encode()))
    assert set(slots_by_name) == set(names)
    # One cluster slot per process: each script touches a single slot.
    for name, slots in slots_by_name.items():
        assert slots == {key_slot(f"{{{name}}}".encode())}, name
    # Every key the store names for a process shares that slot, written yet or not.
    for name in names:
        keys = store.keys.process(name)
        assert {
            key_slot(getattr(keys, f.name).encode()) for f in dataclasses.fields(keys)
        } == slots_by_name[name]


async def test_nothing_is_written_outside_the_prefix(prefix, new_name):
    """On a server of its own (fakeredis), the whole keyspace is the prefix's."""
    import fakeredis  # noqa: PLC0415

    client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with client:
        store = Store(client, prefix=prefix)
        await full_cycle(store, new_name())
        await store.check_ready()
        everything = [key async for key in client.scan_iter(count=1000)]
        assert everything
        assert all(key.startswith(f"{prefix}:") for key in everything)


def lua_sources() -> dict[str, str]:
    folder = scripts.lua_dir()
    found = {path.stem: path.read_text() for path in sorted(folder.glob("*.lua"))}
    assert set(found) == set(scripts.NAMES)
    return found


@pytest.mark.parametrize("name", scripts.NAMES)
def test_scripts_never_scan_the_keyspace(name):
    source = lua_sources()[name]
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    calls = re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]", code)
    assert calls, "a script that calls nothing?"
    commands = {c.upper() for c in calls}
    assert not commands & {"KEYS", "SCAN", "SSCAN", "HSCAN", "ZSCAN", "FLUSHDB", "FLUSHALL"}
    # Key names come only from KEYS: the key of every call is a plain name (a local copied from
    # KEYS), never built by string concatenation. (Hash fields such as 'a:' .. key are data.)
    keyed = re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]\s*,\s*([^,)]+)", code)
    locals_from_keys = set(re.findall(r"\b(\w+)\s*=\s*KEYS\[", code))
    locals_from_keys |= {
        name
        for names, values in re.findall(r"local ([\w, ]+)=\s*([^\n]+)", code)
        if "KEYS[" in values
        for name in (n.strip() for n in names.split(","))
    }
    for command, key in keyed:
        if command.upper() in {"TIME", "SCRIPT"}:
            continue
        assert key.strip() in locals_from_keys or key.strip().startswith("KEYS["), (command, key)


@pytest.mark.parametrize("name", scripts.NAMES)
def test_scripts_open_with_a_header_naming_keys_argv_and_returns(name):
    source = lua_sources()[name]
    header = []
    for line in source.splitlines():
        if not line.startswith("--"):
            break
        header.append(line)
    text = "\n".join(header)
    assert text.startswith(f"-- {name}.lua:")
    assert "KEYS[1]" in text
    assert "Returns" in text
    code = source[len(text) :]
    # Every KEYS[i] the code uses is documented in the header.
    for index in set(re.findall(r"KEYS\[(\d+)\]", code)):
        assert f"KEYS[{index}]" in text, f"{name}.lua uses undocumented KEYS[{index}]"
    for index in set(re.findall(r"ARGV\[(\d+)\]", code)):
        assert f"ARGV[{index}]" in text, f"{name}.lua uses undocumented ARGV[{index}]"


def test_the_lease_ending_helpers_are_the_same_text_in_grant_and_release():
    """grant.lua and release.lua both end leases; their shared block must never drift apart."""

    def shared(name):
        source = lua_sources()[name]
        start, end = source.index("-- BEGIN shared"), source.index("-- END shared")
        return source[start:end]

    assert shared("grant") == shared("release")
    assert "local function park(" in shared("grant")
    assert "local function complete_pass_if_due(" in shared("grant")
