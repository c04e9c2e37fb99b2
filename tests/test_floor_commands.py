"""bench/floor/commands_*.lua run exactly the commands of a steady plain grant + release.

bench/script_floor.py times them as "our commands with Lua as plain as the floor's": the least a
rewrite of lua/grant.lua and lua/release.lua's Lua-side work alone could reach. That figure only
means so while the replay runs the same commands in the same order as the scripts, so MONITOR
records both on a Valkey of this file's own and their command sequences are compared.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bench.script_floor import commands_cycle
from coordinator.embedded import EmbeddedValkey
from coordinator.store import Store
from tests.monitoring import monitored

pytestmark = pytest.mark.anyio

KEYS = 64


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(Path(tmp_path_factory.mktemp("floor-commands"))) as server:
        yield server


@pytest.fixture
async def redis(own_valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    async with Redis.from_url(own_valkey.url, decode_responses=True) as client:
        yield client


async def _commands_of(redis: Redis, cycle: Callable[[], Awaitable[None]]) -> list[list[str]]:
    """The command names each script call of one cycle ran, one list per EVALSHA."""
    async with monitored(redis) as seen:
        await cycle()
    # Both trim the wake-up list once per 32 releases past its cap: not per cycle.
    return [[name for name in call if name != "LTRIM"] for call in seen.script_calls()]


async def test_the_replay_runs_a_steady_plain_cycles_commands_in_order(redis: Redis) -> None:
    store = Store(redis, prefix=f"floor-{uuid.uuid4().hex[:8]}")
    await store.register("p", KEYS)

    async def ours() -> None:
        lease = await store.grant("p", "bench")
        await store.release(lease.external_id or "")

    # Every key touched once, so the next grant takes a touched key as the bench's steady
    # cycles do (a never-touched key is taken by its own path).
    for _ in range(KEYS):
        await ours()
    replay = await commands_cycle(redis)
    await replay()
    theirs, mine = await _commands_of(redis, replay), await _commands_of(redis, ours)
    await store.aclose()
    assert len(mine) == 2, mine
    assert len(mine[0]) >= 10, mine
    assert theirs == mine
