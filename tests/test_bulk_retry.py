"""Bulk redrive: `POST …/keys/retry` and the store's retry_keys / retry_quarantined.

Bounded by counts, not timings: MONITOR shows every command each retry_key.lua call runs, on a
Valkey of this file's own, so the proof that no call handles more than RETRY_CHUNK keys holds at
any size. Bad input is refused whole, before any key changes; a worker's token is refused.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from coordinator import validation
from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from coordinator.embedded import EmbeddedValkey
from coordinator.errors import InvalidField, PassFailed, UnknownProcess
from coordinator.keys import ProcessKeys
from coordinator.models import Redrive
from coordinator.scripts import lua_dir
from coordinator.store import Limits, Store
from tests.conftest import serve
from tests.monitoring import monitored

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
ADMIN, ADMIN_LINE = new_token("admin")
WORKER, WORKER_LINE = new_token("worker")
QUARANTINED = 2_000
SIZE = 2_100  # keys 2000-2099 never granted: free

# Parks keys first..last-1 of a process as grant.lua and release.lua leave a key that failed:
# quarantined (score +inf) or in backoff (a retry_at ARGV[4] microseconds from now), its
# staleness score key - size, its attempts and its failure's machine in keyinfo.
FABRICATE = """
local parked, keyinfo = KEYS[1], KEYS[2]
local first, last, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local score = ARGV[4] == 'inf' and 'inf'
  or string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(ARGV[4]))
local members, fields = {}, {}
for key = first, last - 1 do
  local name = string.format('%d', key)
  members[#members + 1] = score
  members[#members + 1] = name
  for _, field in ipairs({'l:' .. name, string.format('%d', key - size), 'a:' .. name, '0:1',
      'm:' .. name, 'poison-host'}) do
    fields[#fields + 1] = field
  end
end
redis.call('ZADD', parked, unpack(members))
redis.call('HSET', keyinfo, unpack(fields))
"""
HOUR_US = 3_600_000_000


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """A Valkey only this file uses: MONITOR shows this file's commands alone."""
    with EmbeddedValkey(Path(tmp_path_factory.mktemp("bulk-retry"))) as server:
        yield server


@pytest.fixture
async def redis(own_valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    async with Redis.from_url(own_valkey.url, decode_responses=True) as client:
        yield client


@pytest.fixture
def store(redis: Redis, prefix: str) -> Store:
    return Store(redis, prefix=prefix)


@pytest.fixture
async def api(redis: Redis, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    tokens = ";".join([ADMIN_LINE, WORKER_LINE])
    async with serve(create_app(Settings(key_prefix=prefix, tokens=tokens), redis=redis)) as http:
        yield http


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _park(store: Store, name: str, first: int, last: int, retry_in: str = "inf") -> None:
    """Keys first..last-1 quarantined (or in backoff for `retry_in` microseconds)."""
    k = store.keys.process(name)
    size = int(await store.redis.hget(k.meta, "size") or 0)
    for start in range(first, last, 1_000):  # unpack() takes up to 8,000 values
        await store.redis.eval(
            FABRICATE, 2, k.parked, k.keyinfo, start, min(start + 1_000, last), size, retry_in
        )
    fresh = int(await store.redis.hget(k.meta, "fresh") or 0)
    await store.redis.hset(k.meta, "fresh", max(fresh, last))


async def _failed_pass(store: Store, name: str) -> None:
    """Mark the current pass completed and failed, as grant.lua and release.lua do when more
    keys are quarantined than max_failed_keys (meta pass_completed_us and failed '1')."""
    await store.redis.hset(store.keys.process(name).meta, mapping={
        "pass_completed_us": "1700000000000000", "failed": "1"})  # fmt: skip


async def _keyinfo_fields(redis: Redis, k: ProcessKeys) -> set[str]:
    return {str(field).split(":")[0] for field in await redis.hkeys(k.keyinfo)}


async def test_every_quarantined_key_is_retried_250_per_script_call(
    store: Store, redis: Redis
) -> None:
    await store.register("q", SIZE, mode="once", max_attempts=1)
    await _park(store, "q", 0, QUARANTINED)
    await _failed_pass(store, "q")
    k = store.keys.process("q")
    async with monitored(redis) as monitor:
        done = await store.retry_quarantined("q")
    assert done == Redrive(quarantined=QUARANTINED)
    # One retried event per key, at most RETRY_CHUNK keys in each call, and the calls needed.
    events = monitor.per_script_call("XADD")
    assert sum(events) == QUARANTINED
    assert max(events) <= validation.RETRY_CHUNK == 250
    assert len(events) == QUARANTINED // validation.RETRY_CHUNK
    # The quarantined keys are known parked: no key is looked up one by one.
    assert monitor.per_script_call("ZSCORE") == []
    # Every key ends free, attempts and failure machines gone, the pass reopened, not failed.
    assert await redis.zcard(k.parked) == 0
    assert await redis.zcard(k.free) == QUARANTINED
    assert await _keyinfo_fields(redis, k) == set()
    assert await redis.hget(k.meta, "failed") is None
    current = (await store.process("q")).pass_
    assert current is not None
    assert (current.completed_at, current.keys_quarantined) == (None, 0)
    states = {key.state async for key in store.iter_batch_keys("q")}
    assert states == {"free"}
    retried = [e for e in await store.events("q", limit=10_000) if e.type == "retried"]
    assert len(retried) == QUARANTINED


async def test_other_requests_are_served_between_the_chunks(store: Store, redis: Redis) -> None:
    """A redrive gives the event loop back after each call: another process's grants run
    between its chunks, not after the whole of it."""
    await store.register("big", QUARANTINED, max_attempts=1)
    await _park(store, "big", 0, QUARANTINED)
    await store.register("busy", 100)

    async def grants() -> None:
        for _ in range(20):
            lease = await store.grant("busy", "w")
            await store.release(lease.external_id or "")

    async with monitored(redis) as monitor:
        await asyncio.gather(store.retry_quarantined("big"), grants())
    calls = [words for words in monitor.commands if words[0].upper() == "EVALSHA"]
    chunks = [i for i, words in enumerate(calls) if store.keys.process("big").meta in words]
    assert len(chunks) >= QUARANTINED // validation.RETRY_CHUNK  # (+1 answered NOSCRIPT)
    busy = store.keys.process("busy").meta
    between = [words for words in calls[chunks[0] : chunks[-1]] if busy in words]
    assert between, calls


async def test_the_history_stays_trimmed_to_its_cap_through_a_bulk_retry(
    redis: Redis, prefix: str
) -> None:
    """2,000 retried events into a history that keeps about 300: trimmed in every call."""
    store = Store(redis, prefix=prefix, limits=Limits(events_cap=300))
    await store.register("h", 2_000, max_attempts=1)
    await _park(store, "h", 0, 2_000)
    async with monitored(redis) as monitor:
        await store.retry_quarantined("h")
    trims = [words for words in monitor.commands if words[:1] == ["XADD"] and "MAXLEN" in words]
    assert len(trims) == 2_000 // validation.RETRY_CHUNK  # the last event of each call
    kept = await redis.xlen(store.keys.process("h").events)
    assert 300 <= kept <= 300 + 100  # `~` trims whole nodes of 100 entries
    last = (await store.events("h", limit=10_000))[-1]
    # Quarantined keys are taken in the order of their names, as text: "999" is the last.
    assert (last.type, last.key) == ("retried", 999)


async def test_a_list_is_retried_in_chunks_counted_by_the_state_each_key_was_in(
    store: Store, redis: Redis
) -> None:
    await store.register("l", 1_000, max_attempts=1, retry_backoff_seconds=3600)
    await _park(store, "l", 0, 300)  # quarantined
    await _park(store, "l", 300, 400, retry_in=str(HOUR_US))  # in backoff for an hour
    held = await store.grant("l", "w")  # key 400, the stalest not parked
    assert held.key == 400
    listed = [*range(0, 600), 0, 400]  # repeats are retried once
    async with monitored(redis) as monitor:
        done = await store.retry_keys("l", listed)
    assert done == Redrive(quarantined=300, backoff=100, other=200)
    assert done.retried == 600
    assert monitor.per_script_call("XADD") == [250, 250, 100]
    assert monitor.per_script_call("ZSCORE") == [250, 250, 100]
    k = store.keys.process("l")
    assert await redis.zcard(k.parked) == 0
    by_state = {key.key: key.state async for key in store.iter_batch_keys("l")}
    assert {s for key, s in by_state.items() if key != 400} == {"free"}
    assert by_state[400] == "held"  # a retry lifts quarantine and backoff, not a live lease


async def _dump(redis: Redis, prefix: str) -> dict[str, Any]:
    """Every key under the prefix with its contents, to show nothing changed."""
    state: dict[str, Any] = {}
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        kind = await redis.type(key)
        if kind == "hash":
            state[key] = await redis.hgetall(key)
        elif kind == "zset":
            state[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            state[key] = await redis.xlen(key)
        else:
            state[key] = await redis.dump(key)
    return state


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"keys": [*range(300), 10]}, None),  # a valid list: changes keys, checked apart
        ({"keys": [*range(299), 300]}, "keys"),  # the last key is outside 0..299
        ({"keys": [0, -1]}, "keys"),
        ({"keys": [0, True]}, "keys"),
        ({"keys": [0, 1.5]}, "keys"),
        ({"keys": []}, "keys"),
        ({"keys": list(range(validation.RETRY_KEYS_MAX + 1))}, "keys"),
        ({"keys": "0"}, "keys"),
        ({"state": "backoff"}, "state"),
        ({"state": "quarantined", "keys": [0]}, "keys"),
        ({}, "keys"),
        ({"quarantined": True}, "quarantined"),
    ],
)
async def test_bad_input_is_refused_whole_and_changes_nothing(
    store: Store, redis: Redis, prefix: str, api: httpx.AsyncClient, body: Any, field: str | None
) -> None:
    await store.register("bad", 300, max_attempts=1)
    await _park(store, "bad", 0, 300)
    before = await _dump(redis, prefix)
    url = f"{API}/bad/keys/retry"
    answer = await api.post(url, json=body, headers=_as(ADMIN))
    if field is None:
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"retried": 300, "quarantined": 300, "backoff": 0, "other": 0}
        return
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_field"
    assert f"'{field}'" in answer.json()["detail"]
    if body == {"keys": [*range(299), 300]}:
        assert "holds 300, outside the keys of 'bad' (0 to 299)" in answer.json()["detail"]
    assert await _dump(redis, prefix) == before


async def test_unknown_process_and_worker_tokens_are_refused(
    store: Store, redis: Redis, prefix: str, api: httpx.AsyncClient
) -> None:
    await store.register("w", 10, max_attempts=1)
    await _park(store, "w", 0, 10)
    before = await _dump(redis, prefix)
    for body in ({"state": "quarantined"}, {"keys": [1, 2]}):
        refused = await api.post(f"{API}/w/keys/retry", json=body, headers=_as(WORKER))
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
        unknown = await api.post(f"{API}/nope/keys/retry", json=body, headers=_as(ADMIN))
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_process")
    assert await _dump(redis, prefix) == before
    with pytest.raises(UnknownProcess):
        await store.retry_quarantined("nope")
    with pytest.raises(InvalidField):
        await store.retry_keys("w", [10])


async def test_a_completed_once_pass_is_reopened_by_a_bulk_retry(
    store: Store, api: httpx.AsyncClient
) -> None:
    """The whole cycle on the scripts' own state: keys quarantined by failed releases
    complete the pass; the redrive reopens it and its keys are granted and completed."""
    await store.register("o", 4, mode="once", max_attempts=1)
    for _ in range(4):
        lease = await store.grant("o", "w")
        await store.release(lease.external_id or "", "completed" if lease.key < 2 else "failed")
    ended = await store.pass_info("o", 1)
    assert (ended.complete, ended.keys_done, ended.keys_quarantined) == (True, 2, 2)
    answer = await api.post(
        f"{API}/o/keys/retry", json={"state": "quarantined"}, headers=_as(ADMIN)
    )
    assert answer.json() == {"retried": 2, "quarantined": 2, "backoff": 0, "other": 0}
    reopened = await store.pass_info("o", 1)
    assert (reopened.complete, reopened.keys_quarantined) == (False, 0)
    for _ in range(2):
        lease = await store.grant("o", "w")
        assert lease.key in {2, 3}
        await store.release(lease.external_id or "")
    assert (await store.pass_info("o", 1)).complete


async def test_a_pass_failed_by_max_failed_keys_is_reopened_and_no_longer_failed(
    store: Store, api: httpx.AsyncClient
) -> None:
    """Two quarantines fail a pass that allows one (409 pass_failed); the redrive of both
    puts it back in play, not failed, and it completes as a pass that did not fail."""
    await store.register("f", 6, mode="once", max_attempts=1, max_failed_keys=1)
    for _ in range(2):
        lease = await store.grant("f", "w")
        await store.release(lease.external_id or "", "failed")
    failed = await store.pass_info("f", 1)
    assert (failed.complete, failed.failed, failed.keys_quarantined) == (True, True, 2)
    with pytest.raises(PassFailed):
        await store.grant("f", "w")
    answer = await api.post(
        f"{API}/f/keys/retry", json={"state": "quarantined"}, headers=_as(ADMIN)
    )
    assert answer.json() == {"retried": 2, "quarantined": 2, "backoff": 0, "other": 0}
    shown = (await api.get(f"{API}/f", headers=_as(WORKER))).json()["pass"]
    assert (shown["completed_at"], shown["failed"], shown["keys_quarantined"]) == (None, False, 0)
    for _ in range(6):
        lease = await store.grant("f", "w")
        await store.release(lease.external_id or "")
    done = await store.pass_info("f", 1)
    assert (done.complete, done.failed, done.keys_done) == (True, False, 6)


async def test_retry_key_script_refuses_chunks_past_its_bound_and_changes_nothing(
    store: Store, redis: Redis, prefix: str
) -> None:
    source = (lua_dir() / "retry_key.lua").read_text()
    found = re.search(r"^local CHUNK_MAX = (\d+)$", source, re.MULTILINE)
    assert found
    assert int(found.group(1)) == validation.RETRY_CHUNK
    await store.register("s", 300, max_attempts=1)
    await _park(store, "s", 0, 300)
    k = store.keys.process("s").of("retry_key")
    before = await _dump(redis, prefix)
    chunk = [str(key) for key in range(validation.RETRY_CHUNK + 1)]
    refusals: list[tuple[list[str | int], list[Any]]] = [
        (["100", "keys", *chunk], [6, "keys"]),
        (["100", "keys"], [6, "keys"]),
        (["100", "keys", "1", "x"], [6, "keys"]),
        (["100", "quarantined", str(validation.RETRY_CHUNK + 1)], [6, "count"]),
        (["100", "quarantined", "0"], [6, "count"]),
        (["100", "all"], [6, "which"]),
        (["100", "keys", "1", "2", "300"], [10, "300"]),  # outside: the first keys untouched
    ]
    for argv, reply in refusals:
        assert await store.scripts.call("retry_key", k, argv) == reply, argv
    assert await _dump(redis, prefix) == before
