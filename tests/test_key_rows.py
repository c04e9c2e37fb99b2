"""A key listing's JSON is built from inspect.lua's rows without key records (coordinator/rows.py
`key_objects`); it must be byte for byte what `BatchKey.to_json` of the record gives, for keys
in every state, over HTTP, streamed and paged, and across the store's chunks."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from redis.asyncio import Redis

from coordinator.keys import KeySpace
from coordinator.models import KEY_STATES
from coordinator.rows import batch_key_of, key_objects
from coordinator.store import INSPECT_CHUNK, Store
from tests.conftest import Register
from tests.test_api_errors import API

pytestmark = pytest.mark.anyio

KEYS = f"{API}/process/batch_keys"
DAY_US = 86_400_000_000
# Lua numbers are doubles: inspect.lua's times stay below 2^53 microseconds (the year 2255).
MAX_US = 2**53

# Microseconds since the epoch, weighted to where a formatter slips: whole seconds (no
# fraction to print), the ends of days, hours and minutes, and the epoch itself.
micros = st.one_of(
    st.integers(0, MAX_US),
    st.integers(0, MAX_US // 1_000_000).map(lambda s: s * 1_000_000),
    st.integers(1, MAX_US // DAY_US).map(lambda d: d * DAY_US - 1),
    st.integers(0, MAX_US // 3_600_000_000).map(lambda h: h * 3_600_000_000 + 59_999_999),
    st.just(0),
)
names = st.from_regex(r"[A-Za-z0-9_.-]{1,40}", fullmatch=True)


@st.composite
def inspect_rows(draw: st.DrawFn) -> list[Any]:
    """One row as inspect.lua returns it, in any state it can give."""
    state = draw(st.sampled_from(KEY_STATES))
    held = state == "held"
    key = draw(st.integers(0, 2**40))
    # A negative staleness score is a key never completed.
    last = draw(st.one_of(micros, st.integers(-(2**40), -1)))
    token = draw(st.integers(1, 2**53)) if held else 0
    started, expires = (draw(micros), draw(micros)) if held else (0, 0)
    machine = draw(st.text(max_size=64)) if held else ""
    retry_at = draw(micros.filter(bool)) if state == "backoff" else 0
    checkpoint = draw(st.one_of(st.just(0), st.text(max_size=32)))
    attempts = draw(st.integers(0, 1000))
    return [key, last, token, started, expires, machine, attempts, state, retry_at, checkpoint]


def _model_bytes(name: str, rows: list[list[Any]]) -> bytes:
    return orjson.dumps([batch_key_of(name, row).to_json() for row in rows])


@given(names, st.lists(inspect_rows(), min_size=1, max_size=8))
@example("p", [[0, 1_000_000, 0, 0, 0, "", 0, "free", 0, 0]])  # a whole second: ".000000Z"
@example("p", [[3, -7, 9, DAY_US, 2 * DAY_US - 1, 'a "q"\n\u00fc', 2, "held", 0, "cp"]])
def test_a_rows_object_is_the_records_json(name: str, rows: list[list[Any]]) -> None:
    assert orjson.dumps(key_objects(name, rows)) == _model_bytes(name, rows)


async def _fail(client: httpx.AsyncClient, external_id: str) -> None:
    response = await client.delete(f"{KEYS}/{external_id}", params={"outcome": "failed"})
    assert response.status_code == 200, response.text


async def _grant(client: httpx.AsyncClient, name: str, machine: str = "w1") -> dict[str, Any]:
    response = await client.post(KEYS, json={"process_name": name, "machine": machine})
    assert response.status_code == 201, response.text
    granted: dict[str, Any] = response.json()
    return granted


async def _every_state(client: httpx.AsyncClient, redis: Redis, prefix: str, name: str) -> None:
    """Keys of a `once` process by real grants and releases: 0 quarantined, 1 done, 2 held
    (with a checkpoint, which listings leave out, and a machine JSON must escape), 3 in an
    hour's backoff, 4 free after a failure, 5 and on never leased."""
    for _ in range(2):  # a failed key keeps its place first in line, so key 0 comes back
        granted = await _grant(client, name)
        assert granted["key"] == 0
        await _fail(client, granted["external_id"])
    done = await _grant(client, name)
    response = await client.delete(f"{KEYS}/{done['external_id']}")
    assert (done["key"], response.status_code) == (1, 200)
    held = await _grant(client, name, 'w "2"\t\u00fc')
    renewed = await client.patch(f"{KEYS}/{held['external_id']}", json={"checkpoint": "at 9"})
    assert (held["key"], renewed.status_code) == (2, 200)
    meta = KeySpace(prefix).process(name).meta
    for key, backoff_ms in ((3, 3_600_000), (4, 0)):
        # One backoff per process, read at each release: changed between the two failures.
        await redis.hset(meta, "backoff_ms", backoff_ms)
        granted = await _grant(client, name)
        assert granted["key"] == key
        await _fail(client, granted["external_id"])


async def test_the_listing_is_the_records_json_in_every_state(
    client: httpx.AsyncClient, redis: Redis, prefix: str, register: Register
) -> None:
    size = 2 * INSPECT_CHUNK + 7  # three of the store's chunks
    process = await register(key_set_size=size, lease_seconds=600, mode="once", max_attempts=2)
    name = process["process_name"]
    await _every_state(client, redis, prefix, name)
    records = await Store(redis, prefix=prefix).batch_keys(name)
    first_six = ["quarantined", "done", "held", "backoff", "free", "free"]
    assert [k.state for k in records[:6]] == first_six
    assert records[4].attempts == 1
    assert {k.state for k in records} == set(KEY_STATES)
    expected = [k.to_json() for k in records]

    streamed = await client.get(f"{KEYS}/{name}")
    assert streamed.status_code == 200
    assert streamed.content == orjson.dumps(expected)

    first = await client.get(f"{KEYS}/{name}", params={"limit": 3})
    assert first.content == orjson.dumps(expected[:3])
    assert first.headers["link"] == f'<{KEYS}/{name}?limit=3&after=2>; rel="next"'
    rest = await client.get(f"{KEYS}/{name}", params={"limit": size, "after": 2})
    assert rest.content == orjson.dumps(expected[3:])
    assert "link" not in rest.headers


async def test_object_chunks_are_the_record_chunks(store: Store) -> None:
    name = "rows-chunks"
    await store.register(name, 2 * INSPECT_CHUNK + 3)
    granted = await store.grant(name, "m")
    await store.release(granted.external_id or "")
    await store.grant(name, "m")
    records = [chunk async for chunk in store.batch_key_chunks(name, 1, INSPECT_CHUNK + 1)]
    objects = [chunk async for chunk in store.batch_key_object_chunks(name, 1, INSPECT_CHUNK + 1)]
    assert [len(c) for c in objects] == [len(c) for c in records] == [INSPECT_CHUNK, 1]
    assert objects == [[k.to_json() for k in chunk] for chunk in records]
