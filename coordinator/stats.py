"""Per-process figures read from Redis when metrics are scraped (read-only, no script).

Two round trips per scrape, however many processes: the registry of names, then one pipeline
with seven cheap reads per process (HMGET, ZCARD, four ZCOUNT, ZRANGEBYSCORE LIMIT 1),
sent in chunks of `CHUNK` processes. Figures of different processes are not one snapshot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator.store import Store

CHUNK = 500


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One process's keys as a grant would see them at `now_us`."""

    process_name: str
    key_set_size: int
    held: int  # under a lease that has not expired
    free: int  # a grant could hand it out: key_set_size - held (expired leases count as free)
    expired: int  # leases past their expiry that no grant has returned to the free set yet
    never_completed: int  # free keys never released `completed` (untouched ones included;
    # expired leases not yet reclaimed are not looked into)
    stalest_completed_us: int | None  # oldest completion among free keys; None: none completed
    now_us: int
    # Batch runs: the current pass, its keys done, the keys quarantined and backing off now.
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
                k = store.keys.process(name)
                pipe.hmget(k.meta, "size", "fresh", "pass", "done")
                pipe.zcard(k.held)
                pipe.zcount(k.held, "-inf", now_us)
                # Scores below 0 are keys that never completed: (key - size).
                pipe.zcount(k.free, "-inf", "(0")
                pipe.zrangebyscore(k.free, 0, "+inf", start=0, num=1, withscores=True)
                # Quarantined keys are parked at +inf, keys in backoff at their retry time.
                pipe.zcount(k.parked, "+inf", "+inf")
                pipe.zcount(k.parked, "-inf", "(+inf")
            replies = await pipe.execute()
        for i, name in enumerate(chunk):
            reads = replies[7 * i : 7 * i + 7]
            meta, held, expired, free_never, stalest, quarantined, backoff = reads
            if not meta[0]:
                continue  # deleted between the two round trips
            size, fresh = int(meta[0]), int(meta[1] or 0)
            live = int(held) - int(expired)
            stats.append(
                ProcessStats(
                    process_name=name,
                    key_set_size=size,
                    held=live,
                    free=size - live,
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
