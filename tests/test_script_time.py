"""No script holds Valkey long at any size: starting a pass over a process with 200,000
quarantined keys, or deleting one with 200,000 touched keys, is spread over many calls of a
bounded chunk each, none of them a large part of the whole; retrying one key runs a handful
of commands, however many keys are quarantined.

start_pass.lua lifts parked keys a chunk per call and starts the pass in the call that finds
few enough left; these tests check that the result is the one pass start a single call used to
make (every key back, counters right, `after` honoured once) on a Valkey of this module's own,
whose SLOWLOG no other test writes to.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from coordinator import scripts
from coordinator.drain import DRAIN_CHUNK, drain
from coordinator.embedded import EmbeddedValkey
from coordinator.keys import DOOMED, DOOMED_ZSETS, SCRIPT_KEYS
from coordinator.models import Pass, Process
from coordinator.store import Store
from tests.monitoring import monitored

pytestmark = pytest.mark.anyio

QUARANTINED = 200_000
# Commands a one-key retry runs, with reading the key back (today 18), whatever the
# quarantined count.
RETRY_ONE_COMMANDS_MAX = 24
# Commands whose cost grows with what they read, unless given a LIMIT.
RANGE_READS = frozenset({"ZRANGE", "ZRANGEBYSCORE", "ZREVRANGEBYSCORE", "ZRANGESTORE"})
# Valkey's own bound of a slow command, in microseconds: the 5 ms.
SLOW_US = 5_000

# Makes keys first..last-1 of a process touched and quarantined, as grant.lua and release.lua
# leave a key that failed max_attempts times before it ever completed (score key - size).
FABRICATE = """
local parked, keyinfo = KEYS[1], KEYS[2]
local first, last, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local members, fields = {}, {}
for key = first, last - 1 do
  local name = string.format('%d', key)
  members[#members + 1] = 'inf'
  members[#members + 1] = name
  fields[#fields + 1] = 'l:' .. name
  fields[#fields + 1] = string.format('%d', key - size)
  fields[#fields + 1] = 'a:' .. name
  fields[#fields + 1] = '0:1'
end
redis.call('ZADD', parked, unpack(members))
redis.call('HSET', keyinfo, unpack(fields))
"""


@pytest.fixture
def slow_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """A Valkey of this test's own: its SLOWLOG holds only what the test runs, and no
    earlier test's freed memory is left for its allocator to tidy in the middle of it."""
    with EmbeddedValkey(tmp_path_factory.mktemp("slowlog")) as server:
        yield server


@pytest.fixture
async def redis(slow_valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    async with Redis.from_url(slow_valkey.url, decode_responses=True) as client:
        yield client


async def _quarantined_process(store: Store, name: str, size: int = QUARANTINED) -> None:
    """A process of `size` keys, every one of them quarantined (attempts 1 of 1)."""
    await store.register(name, key_set_size=size, max_attempts=1)
    k = store.keys.process(name)
    # 1,000 keys per call: unpack() takes up to 8,000 values.
    for first in range(0, size, 1_000):
        await store.redis.eval(  # type: ignore[misc]
            FABRICATE, 2, k.parked, k.keyinfo, first, min(first + 1_000, size), size
        )
    await store.redis.hset(k.meta, "fresh", size)


def _current(process: Process) -> Pass:
    assert process.pass_ is not None
    return process.pass_


async def _start_slowlog(redis: Redis) -> None:
    await redis.config_set("slowlog-log-slower-than", SLOW_US)
    await redis.config_set("slowlog-max-len", 1000)
    await redis.slowlog_reset()
    await redis.config_resetstat()


async def _assert_no_long_script(
    redis: Redis, calls_at_least: int = 1, *, every_command: bool = False
) -> None:
    """No script since the reset held Valkey long: the work was spread over many short calls.

    At least `calls_at_least` calls did it (each script handles a bounded chunk, so the work
    per call is bounded by the count), and no call took more than a quarter of all the script
    time: one script doing all the work at once (880 ms at 200,000 keys before the chunks) is
    the whole script time in one entry. How many calls SLOWLOG holds (over SLOW_US) is not
    counted: on a quiet machine none, but on 2 cores shared with other test workers a call of
    0.7 ms now and then takes 5 to 50 ms, paused by the machine, not by its work, and how
    often depends on the load. The time per call is measured by make bench.

    With `every_command`, over every command since the reset, not only scripts.
    """
    slow = [e["duration"] for e in await redis.slowlog_get(1000)]
    info = await redis.info("commandstats")
    names = (
        [k for k, v in info.items() if isinstance(v, dict)]
        if every_command
        else ["cmdstat_evalsha"]
    )
    stats = [info.get(name, {}) for name in names]
    calls = sum(int(s.get("calls", 0)) for s in stats)
    total_us = sum(int(s.get("usec", 0)) for s in stats)
    assert all(us <= total_us / 4 for us in slow), (slow, total_us)
    assert calls >= calls_at_least, calls


async def test_a_pass_starts_over_200000_quarantined_keys_in_short_scripts(
    redis: Redis, prefix: str
) -> None:
    store = Store(redis, prefix=prefix)
    await _quarantined_process(store, "q")
    before = await store.process("q")
    assert _current(before).keys_quarantined == QUARANTINED
    await _start_slowlog(redis)
    started = await store.start_pass("q", after=1)
    # start_pass.lua's CHUNK is 250 keys: one call per chunk.
    await _assert_no_long_script(redis, QUARANTINED // 250)
    k = store.keys.process("q")
    assert _current(started).number == 2
    assert _current(started).keys_quarantined == 0
    assert await redis.zcard(k.free) == QUARANTINED
    assert not await redis.exists(k.parked)
    # Attempts and parked scores are gone with the quarantine; the ending pass's record
    # counts every key it had quarantined.
    assert await redis.hlen(k.keyinfo) == 0
    ended = await store.pass_info("q", 1)
    assert ended.keys_quarantined == QUARANTINED
    # Back at their old place: the never-completed key 0 is the stalest and comes first.
    lease = await store.grant("q", "w")
    assert lease.key == 0
    assert lease.attempts == 0


async def test_a_start_left_half_done_is_finished_by_sending_it_again(
    redis: Redis, prefix: str
) -> None:
    store = Store(redis, prefix=prefix)
    size = 5_500
    await _quarantined_process(store, "half", size)
    k = store.keys.process("half")
    # A caller that dies after its first call: a chunk lifted, the pass not started.
    reply = await store.scripts.call("start_pass", k.of("start_pass"), [10_000, 1])
    assert reply[0] == 12
    assert 0 < int(reply[1]) < size
    assert _current(await store.process("half")).number == 1
    again = await store.start_pass("half", after=1)
    assert _current(again).number == 2
    assert await redis.zcard(k.free) == size
    assert (await store.pass_info("half", 1)).keys_quarantined == size


async def test_two_admins_starting_the_same_pass_start_one(redis: Redis, prefix: str) -> None:
    store = Store(redis, prefix=prefix)
    size = 20_000
    await _quarantined_process(store, "two", size)
    await _start_slowlog(redis)
    results = await asyncio.gather(
        store.follow_pass("two", after=1), store.follow_pass("two", after=1)
    )
    await _assert_no_long_script(redis, size // 250)
    assert sorted(started for _, started in results) == [False, True]
    assert _current(await store.process("two")).number == 2
    k = store.keys.process("two")
    assert await redis.zcard(k.free) == size
    assert [e.type for e in await store.events("two", limit=1000)].count("pass-started") == 1


async def test_retrying_a_key_stays_short(redis: Redis, prefix: str) -> None:
    store = Store(redis, prefix=prefix)
    await _quarantined_process(store, "r")
    async with monitored(redis) as seen:
        retried = await store.retry_key("r", 77)
    assert retried.state == "free"
    # A few calls of a handful of commands, none reading over the parked keys: names and
    # counts, not times, so no pause of a loaded machine can flip it.
    calls = seen.script_calls()
    assert len(calls) <= 1 + 3, calls  # the retry, then the key read back
    assert sum(map(len, calls)) <= RETRY_ONE_COMMANDS_MAX, calls
    ranges = [w for w in seen.commands if w[0].upper() in RANGE_READS]
    assert all("LIMIT" in (word.upper() for word in w) for w in ranges), ranges
    k = store.keys.process("r")
    assert await redis.zcard(k.parked) == QUARANTINED - 1


# Makes keys first..last-1 of a batch-run process touched: each in the free set, stamped as
# never completed (score key - size), with its attempts and last score in keyinfo, as
# grant.lua and release.lua leave a key that failed once.
TOUCH = """
local free, keyinfo = KEYS[1], KEYS[2]
local first, last, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local members, fields = {}, {}
for key = first, last - 1 do
  local name = string.format('%d', key)
  members[#members + 1] = string.format('%d', key - size)
  members[#members + 1] = name
  fields[#fields + 1] = 'l:' .. name
  fields[#fields + 1] = string.format('%d', key - size)
  fields[#fields + 1] = 'a:' .. name
  fields[#fields + 1] = '1:1'
end
redis.call('ZADD', free, unpack(members))
redis.call('HSET', keyinfo, unpack(fields))
"""

TOUCHED = 200_000


async def _touched_process(store: Store, name: str, size: int = TOUCHED) -> None:
    """A batch-run process of `size` keys, every one touched: in `free`, with keyinfo."""
    await store.register(name, key_set_size=size, max_attempts=3)
    k = store.keys.process(name)
    for first in range(0, size, 1_000):
        await store.redis.eval(  # type: ignore[misc]
            TOUCH, 2, k.free, k.keyinfo, first, min(first + 1_000, size), size
        )
    await store.redis.hset(k.meta, "fresh", size)


async def test_deleting_200000_touched_keys_frees_them_in_short_scripts(
    redis: Redis, prefix: str
) -> None:
    store = Store(redis, prefix=prefix)
    await _touched_process(store, "d")
    # A live lease, so held, leases and tokens go the same way.
    await store.grant("d", "w")
    await _start_slowlog(redis)
    deleted = await store.unregister("d")
    # Trivial scripts right after: none pays for memory the delete left to free.
    for _ in range(5):
        assert await redis.eval("return 1", 0) == 1  # type: ignore[misc]
    assert deleted.key_set_size == TOUCHED
    # Nothing went to the lazy-free thread in one piece (an UNLINK of the free set did),
    # where freeing it contends with every command for libc's allocator.
    assert (await redis.info("memory"))["lazyfreed_objects"] == 0
    # 600,000 members and fields, a DRAIN_CHUNK per command.
    await _assert_no_long_script(redis, 3 * TOUCHED // DRAIN_CHUNK, every_command=True)
    # The process is gone when the delete answers; only its history and fence stay.
    left = sorted(await redis.keys(f"{prefix}:{{d}}:*"))
    k = store.keys.process("d")
    assert left == sorted([k.events, k.fence])


async def test_a_delete_left_undrained_expires_and_spares_the_name(
    redis: Redis, prefix: str
) -> None:
    store = Store(redis, prefix=prefix)
    size = 3_000
    await _touched_process(store, "u", size)
    k = store.keys.process("u")
    doomed = store.keys.doomed("u", "dead-caller")
    # A caller that dies right after the script, before draining anything.
    keys = k.of("unregister") + list(doomed.values())
    reply = await store.scripts.call("unregister", keys, [10_000, 60_000])
    assert reply[0] == 0
    free, keyinfo = doomed["free"], doomed["keyinfo"]
    assert await redis.zcard(free) == size
    assert await redis.hlen(keyinfo) == 2 * size
    # Nothing there grows for good: what was moved aside expires.
    for key in (free, keyinfo):
        assert 0 < await redis.pttl(key) <= 3_600_000
    # A new registration of the name starts empty, beside the doomed keys.
    await store.register("u", key_set_size=5, max_attempts=3)
    assert not await redis.exists(k.free, k.keyinfo)
    assert (await store.grant("u", "w")).key == 0
    # Draining them later touches only them.
    await drain(redis, doomed)
    assert not await redis.exists(*doomed.values())
    assert await redis.zcard(k.held) == 1
    assert (await store.process("u")).key_set_size == 5


def test_the_doomed_structures_are_the_ones_unregister_renames() -> None:
    # unregister.lua's LARGE lists the KEYS it renames to KEYS 12-18, in DOOMED's order.
    (large,) = re.findall(r"local LARGE = \{([\d, ]+)\}", scripts.sources()["unregister"])
    renamed = [SCRIPT_KEYS["unregister"][int(i) - 1] for i in large.split(",")]
    assert renamed == list(DOOMED)
    assert set(DOOMED) >= DOOMED_ZSETS
