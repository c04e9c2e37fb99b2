"""Valkey's time inside our scripts beside a hand-written floor, per grant + release cycle.

The floor (bench/floor/*.lua) does only what the seed needs: pop the stalest free key, write
the lease record, set its expiry, bump a fence; check the token, drop the lease, put the key
back stamped. Ours is the store's own grant + release, for the variants of
bench/script_cost.py: `plain` (no batch-run options, no request id), `rotate` and `once` (every
option on and a request id on each grant). Beside them, `commands` replays a steady plain
cycle's own commands, in its order, with Lua as plain as the floor's (bench/floor/commands_*.lua;
tests/test_floor_commands.py keeps the two sequences equal): what the scripts would cost if
all their Lua-side work were free, the least a rewrite of the Lua alone can reach. Rounds
alternate between the five on one Valkey.

Per cycle, from INFO commandstats over each window: µs of EVALSHA (the time Valkey spent
running the scripts) and the commands the scripts called (every command but EVALSHA and the
window's own INFO). The ratios are ours over the floor.

    python -m bench.script_floor [--duration S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.script_cost import VARIANTS, Variant, cycling
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.embedded import EmbeddedValkey
from coordinator.store import Limits, Store

PREFIX = "bench-floor"
FLOOR = "floor"
# Our plain cycle's own commands, in its order, run by Lua as plain as the floor's.
COMMANDS = "commands"
FLOOR_KEYS = 64
FLOOR_LEASE_MS = 600_000
FLOOR_DIR = Path(__file__).resolve().parent / "floor"
# Commands a window sends itself, not run by any script.
_NOT_SCRIPTED = frozenset({"evalsha", "info"})


@dataclass(frozen=True)
class FloorRun:
    """One measuring window of one variant."""

    variant: str
    cycles: int
    evalsha_usec: int
    scripted_calls: int

    @property
    def script_us_per_cycle(self) -> float:
        """Valkey's time inside the scripts per grant + release."""
        return self.evalsha_usec / self.cycles


async def _commandstats(stats: Redis) -> tuple[int, int]:
    """(EVALSHA usec, calls of every command the scripts can have run) so far."""
    info: dict[str, Any] = await stats.info("commandstats")
    usec = int(info.get("cmdstat_evalsha", {}).get("usec", 0))
    calls = sum(
        int(v.get("calls", 0))
        for k, v in info.items()
        if k.startswith("cmdstat_") and k.removeprefix("cmdstat_") not in _NOT_SCRIPTED
    )
    return usec, calls


async def _window(
    variant: str,
    cycle: Callable[[], Awaitable[None]],
    stats: Redis,
    *,
    tasks: int,
    warmup: float,
    duration: float,
) -> FloorRun:
    async with cycling(cycle, tasks) as done:
        await asyncio.sleep(warmup)
        first, (usec0, calls0) = done[0], await _commandstats(stats)
        await asyncio.sleep(duration)
        cycles = done[0] - first
        usec1, calls1 = await _commandstats(stats)
    return FloorRun(variant, cycles, usec1 - usec0, calls1 - calls0)


async def _floor_cycle(redis: Redis) -> Callable[[], Awaitable[None]]:
    """Fill the floor's free set and return one floor grant + release."""
    tag = f"{PREFIX}:{{{FLOOR}}}:"
    free, leases, expiry, fence = tag + "free", tag + "leases", tag + "expiry", tag + "fence"
    await redis.delete(free, leases, expiry, fence)
    await redis.zadd(free, {str(key): key - FLOOR_KEYS for key in range(FLOOR_KEYS)})
    grant = redis.register_script((FLOOR_DIR / "floor_grant.lua").read_text())
    release = redis.register_script((FLOOR_DIR / "floor_release.lua").read_text())

    async def cycle() -> None:
        granted = await grant(keys=[free, leases, expiry, fence], args=[FLOOR_LEASE_MS])
        key, token = granted
        if not await release(keys=[free, leases, expiry], args=[key, token]):
            raise AssertionError(f"the floor release refused key {key} token {token}")

    return cycle


async def commands_cycle(redis: Redis) -> Callable[[], Awaitable[None]]:
    """Fill a key set and return one grant + release of our plain commands, floor-style Lua."""
    tag = f"{PREFIX}:{{{COMMANDS}}}:"
    names = ("meta", "free", "held", "leases", "tokens", "fence", "events", "keyinfo", "freed")
    k = {name: tag + name for name in names}
    await redis.delete(*k.values())
    await redis.zadd(k["free"], {str(key): key - FLOOR_KEYS for key in range(FLOOR_KEYS)})
    await redis.hset(k["meta"], mapping={"size": FLOOR_KEYS, "lease_ms": FLOOR_LEASE_MS})
    grant = redis.register_script((FLOOR_DIR / "commands_grant.lua").read_text())
    release = redis.register_script((FLOOR_DIR / "commands_release.lua").read_text())
    grant_keys = [k[n] for n in ("meta", "free", "held", "leases", "tokens", "fence", "events")]
    release_keys = [k[n] for n in ("free", "held", "leases", "tokens", "freed", "events")]

    async def cycle() -> None:
        _, _, token = await grant(keys=[*grant_keys, k["keyinfo"]], args=["bench"])
        reply = await release(keys=[*release_keys, k["meta"], k["keyinfo"]], args=[token])
        if reply[0] != 0:
            raise AssertionError(f"the commands release refused token {token}")

    return cycle


def _our_cycle(store: Store, variant: Variant) -> Callable[[], Awaitable[None]]:
    async def cycle() -> None:
        rid = uuid.uuid4().hex if variant.request_ids else None
        key = await store.grant(variant.name, "bench", request_id=rid)
        await store.release(key.external_id or "")

    return cycle


async def measure(
    url: str, *, tasks: int = 8, warmup: float = 0.5, duration: float = 3.0, rounds: int = 3
) -> dict[str, list[FloorRun]]:
    """The floor and every variant of ours, `rounds` windows each, alternating."""
    redis = connect(url, Settings())
    store = Store(redis, prefix=PREFIX, limits=Limits())
    stats = Redis.from_url(url, decode_responses=True)
    raw = Redis.from_url(url, decode_responses=True)
    runs: dict[str, list[FloorRun]] = {FLOOR: [], COMMANDS: [], **{v.name: [] for v in VARIANTS}}
    try:
        cycles = {FLOOR: await _floor_cycle(raw), COMMANDS: await commands_cycle(raw)}
        for variant in VARIANTS:
            await store.register(variant.name, variant.key_set_size, 600, **variant.options)
            cycles[variant.name] = _our_cycle(store, variant)
        for _ in range(rounds):
            for name, cycle in cycles.items():
                run = await _window(
                    name, cycle, stats, tasks=tasks, warmup=warmup, duration=duration
                )
                runs[name].append(run)
        for variant in VARIANTS:
            await store.unregister(variant.name)
    finally:
        await store.aclose()
        for client in (redis, stats, raw):
            await client.aclose()
    return runs


def summary(runs: dict[str, list[FloorRun]]) -> dict[str, Any]:
    """Per variant: script µs and scripted commands per cycle; ours over the floor."""
    out: dict[str, Any] = {}
    for name, variant_runs in runs.items():
        cycles = sum(r.cycles for r in variant_runs)
        out[name] = {
            "cycles": cycles,
            "script_us_per_cycle": round(sum(r.evalsha_usec for r in variant_runs) / cycles, 2),
            "commands_per_cycle": round(sum(r.scripted_calls for r in variant_runs) / cycles, 2),
            "per_round_script_us": [round(r.script_us_per_cycle, 2) for r in variant_runs],
            # The least disturbed window: on a shared machine the others carry its load too.
            "min_round_script_us": round(min(r.script_us_per_cycle for r in variant_runs), 2),
        }
    floor, floor_min = out[FLOOR]["script_us_per_cycle"], out[FLOOR]["min_round_script_us"]
    for variant in (COMMANDS, *(v.name for v in VARIANTS)):
        ours = out[variant]
        ours["ratio"] = round(ours["script_us_per_cycle"] / floor, 2)
        ours["min_round_ratio"] = round(ours["min_round_script_us"] / floor_min, 2)
    # The figures the targets are on: plain (<= 1.6) and the costlier option set (<= 2.0).
    out["plain_ratio"] = out["plain"]["ratio"]
    out["options_ratio"] = max(out[v.name]["ratio"] for v in VARIANTS if v.request_ids)
    return out


def main() -> None:
    """Start a private Valkey, measure, print the summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=8, help="concurrent cycles")
    args = parser.parse_args()
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bpc-floor-") as tmp,
        EmbeddedValkey(Path(tmp) / "valkey") as valkey,
    ):
        runs = asyncio.run(
            measure(valkey.url, tasks=args.tasks, duration=args.duration, rounds=args.rounds)
        )
    result = summary(runs)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
