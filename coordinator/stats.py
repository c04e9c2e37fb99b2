"""Per-process figures read from Redis when metrics are scraped (read-only, no script).

Three round trips per scrape, however many processes: the registry of names, one pipeline
of each process's meta (a `once` pass's done keys are counted from its start), then one with
seven cheap reads per process (ZCARD, five ZCOUNT, ZRANGEBYSCORE LIMIT 1), each sent in chunks
of `CHUNK` processes. A key's state is counted as inspect.lua decides it for one key (a backoff
or lease that has ended is free); figures of different processes are not one snapshot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator.store import Store

CHUNK = 500
# The meta fields a scrape reads, in this order.
_META = ("size", "fresh", "pass", "done", "mode", "pass_started_us")


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

    @property
    def stalest_age_seconds(self) -> float | None:
        """Seconds since the stalest completion among the free keys."""
        if self.stalest_completed_us is None:
            return None
        return max(0.0, (self.now_us - self.stalest_completed_us) / 1e6)


async def process_stats(store: Store) -> list[ProcessStats]:
    """Every registered process's figures, by name.

    "Now" is this API process's clock (TIME cannot join a cluster pipeline); keep the clocks
    in sync, as the fencing tokens ask anyway.
    """
    redis = store.redis
    names = [str(n) for n in await redis.zrange(store.keys.registry, 0, -1)]
    now_us = int(time.time() * 1_000_000)
    stats: list[ProcessStats] = []
    for start in range(0, len(names), CHUNK):
        chunk = names[start : start + CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for name in chunk:
                pipe.hmget(store.keys.process(name).meta, *_META)
            metas = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for name, meta in zip(chunk, metas, strict=True):
                k = store.keys.process(name)
                pipe.zcard(k.held)
                pipe.zcount(k.held, "-inf", now_us)
                # Scores below 0 are keys that never completed: (key - size).
                pipe.zcount(k.free, "-inf", "(0")
                pipe.zrangebyscore(k.free, 0, "+inf", start=0, num=1, withscores=True)
                # Quarantined keys are parked at +inf, keys in backoff at their retry time.
                pipe.zcount(k.parked, "+inf", "+inf")
                pipe.zcount(k.parked, f"({now_us}", "(+inf")
                # As inspect.lua: a `once` key is done when completed since its pass started.
                pipe.zcount(k.free, f"({meta[5] or 0}", "+inf" if meta[4] == "once" else "-inf")
            replies = await pipe.execute()
        for i, (name, meta) in enumerate(zip(chunk, metas, strict=True)):
            reads = replies[7 * i : 7 * i + 7]
            held, expired, free_never, stalest, quarantined, backoff, done = reads
            if not meta[0]:
                continue  # deleted between the round trips
            size, fresh = int(meta[0]), int(meta[1] or 0)
            live = int(held) - int(expired)
            stats.append(
                ProcessStats(
                    process_name=name,
                    key_set_size=size,
                    held=live,
                    free=max(0, size - live - int(done) - int(quarantined) - int(backoff)),
                    expired=int(expired),
                    never_completed=int(free_never) + (size - fresh),
                    stalest_completed_us=int(stalest[0][1]) if stalest else None,
                    now_us=now_us,
                    pass_number=int(meta[2] or 1),
                    keys_done=int(meta[3] or 0),
                    quarantined=int(quarantined),
                    in_backoff=int(backoff),
                )
            )
    return stats
