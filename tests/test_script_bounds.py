"""The scripts defend themselves: direct callers pass arguments straight to them.

Every number out of range is refused with status 6 and changes nothing (a lease_ms of 10^19
used to overflow `%d`, wedge the key and turn every later listing, renew and release of the
process into an error). The bounds each script declares are the ones `coordinator.validation`
declares for the API. Renew and release act only on a lease record that carries the caller's
token, and grant repairs, never trips on, a record that is missing or unreadable.
Each test runs on the real Valkey and on fakeredis[lua].
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from coordinator import lease_id, validation
from coordinator.errors import LeaseGone
from coordinator.keys import KeySpace, ProcessKeys
from coordinator.scripts import lua_dir, sources
from coordinator.store import Store

pytestmark = pytest.mark.anyio

BIG = str(10**19)


async def _dump(redis: Redis, prefix: str) -> dict[str, Any]:
    """Every key under the prefix with its type and contents, to show nothing changed."""
    state: dict[str, Any] = {}
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        kind = await redis.type(key)
        if kind == "hash":
            state[key] = await redis.hgetall(key)
        elif kind == "zset":
            state[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            state[key] = await redis.get(key)
        elif kind == "list":
            state[key] = await redis.lrange(key, 0, -1)
        elif kind == "stream":
            state[key] = await redis.xlen(key)
    return state


def _keys(k: ProcessKeys, script: str) -> list[str]:
    return {
        "register": [k.meta, k.events],
        "grant": [k.meta, k.free, k.held, k.leases, k.tokens, k.fence, k.events],
        "renew": [k.free, k.held, k.leases, k.tokens, k.fence, k.freed, k.events],
        "release": [k.free, k.held, k.leases, k.tokens, k.fence, k.freed, k.events],
        "inspect": [k.meta, k.free, k.leases],
        "unregister": [k.meta, k.free, k.held, k.leases, k.tokens, k.freed, k.events],
    }[script]


@pytest.fixture
async def setup(
    redis: Redis, prefix: str, new_name: Callable[[], str]
) -> tuple[Store, ProcessKeys, str, str]:
    """A process of 2 keys with key 0 leased: (store, keys, name, token)."""
    store = Store(redis, prefix=prefix)
    name = new_name()
    await store.register(name, key_set_size=2)
    lease = await store.grant(name, "w")
    return store, KeySpace(prefix).process(name), name, str(lease.fencing_token)


# (script, ARGV, the argument named in the refusal); `{token}` is the live lease's token.
REFUSALS = [
    ("register", ["0", "1000"], "key_set_size"),
    ("register", [str(validation.KEY_SET_SIZE_LIMIT + 1), "1000"], "key_set_size"),
    ("register", ["10", BIG], "lease_ms"),
    ("register", ["10", str(validation.LEASE_SECONDS_MAX * 1000 + 1)], "lease_ms"),
    ("register", ["10", "1000", str(validation.EVENTS_CAP_MAX + 1)], "events_cap"),
    ("grant", ["w", BIG], "lease_ms"),
    ("grant", ["w", str(validation.LEASE_SECONDS_MAX * 1000 + 1)], "lease_ms"),
    ("grant", ["w", "-1"], "lease_ms"),
    ("grant", ["w", "1.5"], "lease_ms"),
    ("grant", ["x" * (validation.MACHINE_BYTES_MAX + 1), "0"], "machine"),
    ("grant", ["w", "0", "0"], "events_cap"),
    ("grant", ["w", "0", BIG], "events_cap"),
    ("grant", ["w", "0", "100", "not-hex"], "holder"),
    ("grant", ["w", "0", "100", "a" * (validation.HOLDER_MAX + 1)], "holder"),
    ("renew", ["{token}", BIG], "lease_ms"),
    ("renew", ["{token}", str(validation.LEASE_SECONDS_MAX * 1000 + 1)], "lease_ms"),
    ("renew", ["{token}", "0", BIG], "events_cap"),
    ("renew", ["{token}", "0", "100", "zz"], "holder"),
    ("release", ["{token}", "completed", BIG], "events_cap"),
    ("release", ["{token}", "done"], "outcome"),
    ("release", ["{token}", "completed", "100", "g"], "holder"),
    ("inspect", ["0", str(validation.INSPECT_COUNT_MAX + 1)], "count"),
    ("inspect", [str(validation.KEY_SET_SIZE_LIMIT + 1), "1"], "first"),
    ("inspect", ["-1", "1"], "first"),
    ("unregister", [BIG], "events_cap"),
    ("unregister", ["100", "0"], "history_ms"),
    ("unregister", ["100", BIG], "history_ms"),
]


@pytest.mark.parametrize(("script", "argv", "argument"), REFUSALS)
async def test_out_of_range_arguments_are_refused_and_change_nothing(
    setup: tuple[Store, ProcessKeys, str, str],
    redis: Redis,
    prefix: str,
    script: str,
    argv: list[str],
    argument: str,
) -> None:
    store, keys, name, token = setup
    before = await _dump(redis, prefix)
    args = [a.replace("{token}", token) for a in argv]
    reply = await redis.evalsha(
        await redis.script_load(sources()[script]),
        len(_keys(keys, script)),
        *_keys(keys, script),
        *args,
    )
    assert reply == [6, argument]
    assert await _dump(redis, prefix) == before
    # ... and the process still works: list, renew and release its lease.
    assert len(await store.batch_keys(name)) == 2


async def test_a_huge_lease_cannot_wedge_a_key(
    setup: tuple[Store, ProcessKeys, str, str], redis: Redis
) -> None:
    store, keys, name, _ = setup
    sha = await redis.script_load(sources()["grant"])
    assert await redis.evalsha(sha, 7, *_keys(keys, "grant"), "w", BIG) == [6, "lease_ms"]
    # The free key 1 is still grantable with a sane lease, and everything still reads.
    granted = await store.grant(name, "w")
    assert granted.key == 1
    await store.renew(granted.external_id)
    await store.release(granted.external_id)
    assert [k.key for k in await store.batch_keys(name)] == [0, 1]


def _lua_constant(script: str, name: str) -> int:
    source = (lua_dir() / f"{script}.lua").read_text()
    found = re.search(rf"^local {name} = (\d+)$", source, re.MULTILINE)
    assert found, f"{script}.lua declares no {name}"
    return int(found.group(1))


@pytest.mark.parametrize(
    ("scripts", "name", "value"),
    [
        (("grant", "renew", "register"), "LEASE_MS_MAX", validation.LEASE_SECONDS_MAX * 1000),
        (
            ("grant", "renew", "release", "register", "unregister"),
            "EVENTS_CAP_MAX",
            validation.EVENTS_CAP_MAX,
        ),
        (("grant",), "MACHINE_BYTES_MAX", validation.MACHINE_BYTES_MAX),
        (("grant", "renew", "release"), "HOLDER_MAX", validation.HOLDER_MAX),
        (("register", "inspect"), "KEY_SET_SIZE_MAX", validation.KEY_SET_SIZE_LIMIT),
        (("inspect",), "INSPECT_COUNT_MAX", validation.INSPECT_COUNT_MAX),
        (
            ("unregister",),
            "HISTORY_MS_MAX",
            validation.DELETED_HISTORY_SECONDS_MAX * 1000,
        ),
    ],
)
def test_each_script_declares_the_bounds_of_validation(
    scripts: tuple[str, ...], name: str, value: int
) -> None:
    for script in scripts:
        assert _lua_constant(script, name) == value, script


async def test_renew_and_release_refuse_a_record_that_is_not_their_token(
    setup: tuple[Store, ProcessKeys, str, str], redis: Redis, prefix: str
) -> None:
    store, keys, name, token = setup
    external_id = str(lease_id.compose(name, int(token)))
    # Another lease's record stands where this token's key points (a damaged process).
    record = await redis.hget(keys.leases, "0")
    assert record is not None
    _, rest = record.split("|", 1)
    await redis.hset(keys.leases, "0", f"{int(token) + 1}|{rest}")
    with pytest.raises(LeaseGone):
        await store.renew(external_id)
    with pytest.raises(LeaseGone):
        await store.release(external_id)
    # The stale token entry is gone, so it can never name a key again.
    assert await redis.hget(keys.tokens, token) is None


async def test_a_missing_record_is_gone_for_renew_and_repaired_by_grant(
    setup: tuple[Store, ProcessKeys, str, str], redis: Redis
) -> None:
    store, keys, name, token = setup
    external_id = str(lease_id.compose(name, int(token)))
    await redis.hdel(keys.leases, "0")
    with pytest.raises(LeaseGone):
        await store.renew(external_id)
    with pytest.raises(LeaseGone):
        await store.release(external_id)
    # Listing shows key 0 free; once its expiry passes, grant returns it to the free set.
    listed = await store.batch_keys(name)
    assert [k.held for k in listed] == [False, False]
    await redis.zadd(keys.held, {"0": 1})  # expired long ago
    granted = {(await store.grant(name, "w")).key, (await store.grant(name, "w")).key}
    assert granted == {0, 1}


async def test_grant_skips_an_unreadable_record(
    setup: tuple[Store, ProcessKeys, str, str], redis: Redis
) -> None:
    store, keys, name, _ = setup
    await redis.hset(keys.leases, "0", "garbage")
    await redis.zadd(keys.held, {"0": 1})
    assert (await store.grant(name, "w")).key in (0, 1)
    assert (await store.grant(name, "w")).key in (0, 1)
