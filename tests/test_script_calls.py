"""A grant + release cycle costs Valkey a counted number of commands, and a plain process none
for the batch-run bookkeeping it does not use.

Counts, not timings: Valkey counts every command a script runs in INFO commandstats, and
MONITOR shows each with the keys it names. Both are read on a Valkey of this file's own, so
no other test's commands are counted. The figures are the scripts' own (lua/grant.lua,
lua/release.lua); bench/script_floor.py measures what they cost in time beside the floor.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from coordinator.embedded import EmbeddedValkey
from coordinator.keys import KeySpace
from coordinator.store import Store

pytestmark = pytest.mark.anyio

# Commands a test sends itself, not run by a script.
NOT_SCRIPTED = frozenset({"evalsha", "info", "config|resetstat", "monitor", "echo"})
CYCLES = 70  # past the freed list's cap of 64, so its trimming is counted too
OPTIONS = {"mode": "rotate", "max_attempts": 3, "retry_backoff_seconds": 1}
# Commands per cycle, at most (today's figures; before: 33 and 37-38). The processes counted
# have keys never granted yet: once every key was, a completion with the options on also
# counts the quarantine (one command more) to see whether the pass is complete.
PLAIN_MAX = 25
OPTIONS_MAX = 31
# Per cycle, the freed list is trimmed once per 32 releases, not on each.
TRIMS_MAX = CYCLES // 32 + 1


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """A Valkey only this file uses: its command counts are this file's alone."""
    with EmbeddedValkey(Path(tmp_path_factory.mktemp("calls"))) as server:
        yield server


@pytest.fixture
async def redis(own_valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    async with Redis.from_url(own_valkey.url, decode_responses=True) as client:
        yield client


async def _cycles(store: Store, name: str, count: int, *, request_ids: bool) -> None:
    for _ in range(count):
        rid = uuid.uuid4().hex if request_ids else None
        lease = await store.grant(name, "w", request_id=rid)
        await store.release(lease.external_id or "")


async def _scripted_calls(redis: Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, of the commands scripts run."""
    info: dict[str, Any] = await redis.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}
    return {k: n for k, n in calls.items() if k not in NOT_SCRIPTED}


async def _counted(redis: Redis, prefix: str, options: dict[str, Any], request_ids: bool
                   ) -> dict[str, int]:  # fmt: skip
    store = Store(redis, prefix=prefix)
    # More keys than cycles: no pass completes while counted (that is a few commands more,
    # once per key_set_size completions).
    await store.register("p", 1000, **options)
    # The process id resolved and the history begun: the cycles counted are steady ones.
    await _cycles(store, "p", 8, request_ids=request_ids)
    await redis.config_resetstat()
    await _cycles(store, "p", CYCLES, request_ids=request_ids)
    counted = await _scripted_calls(redis)
    await store.aclose()
    return counted


async def test_a_plain_cycle_runs_at_most_its_commands(redis: Redis, prefix: str) -> None:
    calls = await _counted(redis, prefix, {}, request_ids=False)
    assert sum(calls.values()) <= PLAIN_MAX * CYCLES + TRIMS_MAX, calls
    assert calls.get("ltrim", 0) <= TRIMS_MAX, calls
    # Nothing of batch runs is asked: no backoff to end, no quarantine to count.
    assert "zcount" not in calls, calls
    assert calls.get("zrangebyscore", 0) == CYCLES, calls  # the expired leases' only


@pytest.mark.parametrize("mode", ["rotate", "once"])
async def test_a_cycle_with_every_option_and_a_request_id_runs_at_most_its_commands(
    redis: Redis, prefix: str, mode: str
) -> None:
    calls = await _counted(redis, prefix, {**OPTIONS, "mode": mode}, request_ids=True)
    assert sum(calls.values()) <= OPTIONS_MAX * CYCLES + TRIMS_MAX, calls


async def test_a_plain_process_touches_no_batch_run_key(redis: Redis, prefix: str) -> None:
    """MONITOR shows each command a script runs: none names keyinfo, parked or ended, but
    for asking whether keyinfo exists."""
    store = Store(redis, prefix=prefix)
    await store.register("p", 4)
    k = KeySpace(prefix).process("p")
    untouched = {k.keyinfo, k.parked, k.ended}
    marker = f"end-{uuid.uuid4().hex}"
    seen: list[str] = []
    async with redis.monitor() as monitor:

        async def listen() -> None:
            async for command in monitor.listen():
                seen.append(str(command["command"]))
                if marker in seen[-1]:
                    return

        listening = asyncio.create_task(listen())
        await asyncio.sleep(0)
        await _cycles(store, "p", 20, request_ids=False)
        await redis.echo(marker)
        await asyncio.wait_for(listening, 10)
    await store.aclose()
    scripted = [c.split() for c in seen if k.leases in c.split()]
    assert len(scripted) >= 40, seen  # the scripts' commands were seen, with their keys
    touching = [
        c
        for c in map(str.split, seen)
        if untouched & set(c) and c[0].upper() not in ("EXISTS", "EVALSHA")
    ]
    assert not touching, touching
