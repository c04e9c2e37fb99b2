"""Per-process figures read from Redis for /metrics (read-only, no script), in bounded chunks.

The registry is paged by name (ZRANGEBYLEX, `CHUNK` names at a time), and each page's
figures come from one write of eight cheap reads per process (HMGET of the meta, its pass's
start and completion included; ZCARD, four ZCOUNT, ZRANGEBYSCORE LIMIT 1, GET of the fencing
token), plus one ZCOUNT per `once` process of the page in a second, small write (its done
keys are counted from its pass's start). So Valkey and the event loop are each held for one
page at a time, however many processes exist. A key's state is counted as inspect.lua decides
it for one key (a backoff or lease that has ended is free); figures of different pages are not
one snapshot.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hiredis

if TYPE_CHECKING:
    from coordinator.connection import RedisClient
    from coordinator.keys import KeySpace

# Processes read per page: 200 x 8 commands in one write hold Valkey about 1-2 ms and the
# event loop a few ms (packing the commands, reading the replies, building the figures).
CHUNK = 200
# Commands per process in a page's first write (the reads listed above).
READS_PER_PROCESS = 8
# A page's replies arrive within this when the client sets no socket timeout.
PAGE_TIMEOUT_SECONDS = 10.0
# The meta fields read, in this order.
_META = (
    "size",
    "fresh",
    "pass",
    "done",
    "mode",
    "pass_started_us",
    "pass_completed_us",
    "created_us",
    "failed",
)


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One process's keys as a grant would see them at `now_us`."""

    process_name: str
    key_set_size: int
    held: int  # under a lease that has not expired
    free: int  # a grant could hand it out: no live lease, not done in this pass, not parked
    # (leases and backoffs that have ended count as free)
    expired: int  # leases past their expiry that no grant has returned to the free set yet
    never_completed: int  # free keys never released `completed` (untouched ones included;
    # expired leases not yet reclaimed are not looked into)
    stalest_completed_us: int | None  # oldest completion among free keys; None: none completed
    now_us: int
    # Batch runs: the current pass, its keys done (the meta's count), the keys quarantined
    # and those whose backoff has not yet ended.
    pass_number: int = 1
    keys_done: int = 0
    quarantined: int = 0
    in_backoff: int = 0
    # The last fencing token handed out (0: never granted). Tokens are at least the
    # microseconds since 2026-01-01 at the grant, so a larger one was granted more recently.
    last_token: int = 0
    # When the current pass started (0: unknown, a process registered before the registry kept
    # creation times), and whether it is complete (a `once` pass, until the next is started;
    # a `rotate` process starts its next pass the instant one completes).
    pass_started_us: int = 0
    pass_complete: bool = False
    # The current `once` pass failed: more keys quarantined than its max_failed_keys.
    pass_failed: bool = False

    @property
    def stalest_age_seconds(self) -> float | None:
        """Seconds since the stalest completion among the free keys."""
        if self.stalest_completed_us is None:
            return None
        return max(0.0, (self.now_us - self.stalest_completed_us) / 1e6)


async def registry_pages(
    redis: RedisClient, keys: KeySpace, chunk: int = CHUNK
) -> AsyncIterator[list[str]]:
    """The registered names in name order, `chunk` at a time (each page one ZRANGEBYLEX past
    the last name seen, so names added or removed meanwhile shift no page)."""
    low = "-"
    while True:
        page = [str(n) for n in await redis.zrangebylex(keys.registry, low, "+", 0, chunk)]
        if page:
            yield page
        if len(page) < chunk:
            return
        low = "(" + page[-1]


async def page_stats(redis: RedisClient, keys: KeySpace, names: list[str]) -> list[ProcessStats]:
    """The figures of the processes `names` (those deleted meanwhile are left out).

    "Now" is this API process's clock (TIME cannot join a cluster pipeline); keep the clocks
    in sync, as the fencing tokens ask anyway.
    """
    now_us = int(time.time() * 1_000_000)
    commands: list[tuple[str | int, ...]] = []
    for name in names:
        k = keys.process(name)
        commands += [
            ("HMGET", k.meta, *_META),
            ("ZCARD", k.held),
            ("ZCOUNT", k.held, "-inf", now_us),
            # Scores below 0 are keys that never completed: (key - size).
            ("ZCOUNT", k.free, "-inf", "(0"),
            ("ZRANGEBYSCORE", k.free, 0, "+inf", "WITHSCORES", "LIMIT", 0, 1),
            # Quarantined keys are parked at +inf, keys in backoff at their retry time.
            ("ZCOUNT", k.parked, "+inf", "+inf"),
            ("ZCOUNT", k.parked, f"({now_us}", "(+inf"),
            ("GET", k.fence),
        ]
    replies = await send_page(redis, commands)
    rows = [replies[i : i + READS_PER_PROCESS] for i in range(0, len(replies), READS_PER_PROCESS)]
    # As inspect.lua: a `once` key is done when completed since its pass started.
    once = [i for i, row in enumerate(rows) if row[0][4] == "once"]
    done = dict.fromkeys(range(len(rows)), 0)
    if once:
        counts = await send_page(
            redis,
            [
                ("ZCOUNT", keys.process(names[i]).free, f"({rows[i][0][5] or 0}", "+inf")
                for i in once
            ],
        )
        done.update(zip(once, [int(n) for n in counts], strict=True))
    stats: list[ProcessStats] = []
    for i, (name, row) in enumerate(zip(names, rows, strict=True)):
        meta, held, expired, free_never, stalest, quarantined, backoff, token = row
        if not meta[0]:
            continue  # deleted since its name was read
        size, fresh = int(meta[0]), int(meta[1] or 0)
        live = int(held) - int(expired)
        stats.append(
            ProcessStats(
                process_name=name,
                key_set_size=size,
                held=live,
                free=max(0, size - live - done[i] - int(quarantined) - int(backoff)),
                expired=int(expired),
                never_completed=int(free_never) + (size - fresh),
                stalest_completed_us=_score(stalest),
                now_us=now_us,
                pass_number=int(meta[2] or 1),
                keys_done=int(meta[3] or 0),
                quarantined=int(quarantined),
                in_backoff=int(backoff),
                last_token=int(token or 0),
                # A process registered before batch runs is in pass 1, started when created.
                pass_started_us=int(meta[5] or meta[7] or 0),
                pass_complete=bool(meta[6]),
                # `failed` names the pass that failed; the current one only while complete.
                pass_failed=bool(meta[6]) and meta[8] == (meta[2] or "1"),
            )
        )
    return stats


def _score(reply: list[Any]) -> int | None:
    """The score of ZRANGEBYSCORE WITHSCORES LIMIT 0 1 as sent (no reply callback parses it):
    [member, score] in RESP2, [[member, score]] in RESP3; None when the set is empty."""
    if not reply:
        return None
    pair = reply[0] if isinstance(reply[0], list) else reply
    return int(float(pair[1]))


async def send_page(redis: RedisClient, commands: list[tuple[str | int, ...]]) -> list[Any]:
    """The replies of `commands`, sent in one write on one pooled connection.

    A redis-py pipeline spends about 20 µs of Python per command (packing it, and a timer
    around each reply); here the page is packed by hiredis and its replies read under one
    timer, three times cheaper. A cluster client, or a pool of connections that are not
    redis-py's own sockets (fakeredis), takes the pipeline, which routes each command.
    """
    pool = getattr(redis, "connection_pool", None)
    if pool is None or not pool.connection_class.__module__.startswith("redis."):
        async with redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())
    # hiredis's stub types a command as a tuple of one element.
    packed = b"".join(hiredis.pack_command(c) for c in commands)  # type: ignore[arg-type]
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(packed, check_health=False)
        async with asyncio.timeout(connection.socket_timeout or PAGE_TIMEOUT_SECONDS):
            # math.inf: no timer per reply (the page has one).
            return [await connection.read_response(timeout=math.inf) for _ in commands]
    except BaseException:
        # Replies left unread would answer the next command sent on it.
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
