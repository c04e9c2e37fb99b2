"""Reads a process's progress (`coordinator.progress.Progress`) from Redis, read-only, no script.

The counts are `coordinator.stats.page_stats`'s, the figures /metrics shows, which count each
key's state as inspect.lua decides it for the key listing: one truth. Beside them, one write
of a few more reads: the meta's `qdone`, completion time and epoch, one ZCOUNT of the keys
completed within the rate's window, and the first QUARANTINED_SHOWN_MAX quarantined keys
(ZRANGEBYSCORE on `parked` at +inf, LIMIT), then one HMGET of their attempts, machines and
quarantine times.
So a read costs O(log n) plus the bounded list, never a walk over the key space.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coordinator import validation
from coordinator.errors import UnknownProcess
from coordinator.models import utc
from coordinator.progress import (
    ETA_MIN_KEYS_DONE,
    QUARANTINED_SHOWN_MAX,
    RATE_WINDOW_SECONDS,
    Progress,
    QuarantinedKey,
)
from coordinator.stats import page_stats, send_page

if TYPE_CHECKING:
    from coordinator.connection import RedisClient
    from coordinator.keys import KeySpace
    from coordinator.stats import ProcessStats


async def read_progress(redis: RedisClient, keys: KeySpace, name: str) -> Progress:
    """The progress of process `name` through its current pass; UnknownProcess if none."""
    name = validation.process_name(name)
    found = await page_stats(redis, keys, [name])
    if not found:
        raise UnknownProcess(name)
    stats = found[0]
    k = keys.process(name)
    window_start = max(stats.pass_started_us, stats.now_us - RATE_WINDOW_SECONDS * 1_000_000)
    meta, recent, parked, backoff = await send_page(
        redis,
        [
            ("HMGET", k.meta, "qdone", "pass_completed_us", "epoch"),
            # The free set's scores are each key's last completion (grant.lua's header), so
            # this counts the keys completed in the window and free since. It misses a key
            # completed there and granted again or quarantined since (`rotate` only: a `once`
            # pass grants no done key), and counts a key completed twice there once.
            ("ZCOUNT", k.free, f"({window_start}", "+inf"),
            # Members of one score come in byte order ("10" before "2"): the first shown.
            ("ZRANGEBYSCORE", k.parked, "+inf", "+inf", "LIMIT", 0, QUARANTINED_SHOWN_MAX),
            # The first backoff to end (those already ended are free, as stats counts them).
            ("ZRANGEBYSCORE", k.parked, f"({stats.now_us}", "(+inf", "WITHSCORES", "LIMIT", 0, 1),
        ],
    )
    qdone, completed_us, epoch = meta
    shown = await _quarantined(redis, k.keyinfo, sorted(int(key) for key in parked), epoch)
    # A `rotate` key done in this pass and then quarantined counts in both meta counts (qdone).
    done = max(0, stats.keys_done - int(qdone or 0))
    left = max(0, stats.key_set_size - done - stats.quarantined)
    seconds = (stats.now_us - window_start) / 1e6
    rate = int(recent) / seconds * 60 if int(recent) >= ETA_MIN_KEYS_DONE and seconds > 0 else None
    backoff_ends_us = _first_score(backoff)
    return _progress(
        stats,
        backoff_ends_us=backoff_ends_us,
        done=done,
        left=left,
        rate=rate,
        shown=shown,
        completed_us=int(completed_us or 0) or None,
    )


async def _quarantined(
    redis: RedisClient, keyinfo: str, shown: list[int], epoch: str | None
) -> tuple[QuarantinedKey, ...]:
    """The quarantined keys `shown` with their attempts (of this epoch, as inspect.lua counts
    them), the machine of the lease whose end quarantined them (`m:<key>`) and when it ended
    (`q:<key>`), each when kept (an older script kept no time, nor, before it, a machine)."""
    if not shown:
        return ()
    fields = [f"{prefix}:{key}" for key in shown for prefix in ("a", "m", "q")]
    (values,) = await send_page(redis, [("HMGET", keyinfo, *fields)])
    found = []
    for i, key in enumerate(shown):
        attempts, machine, at_us = values[3 * i : 3 * i + 3]
        of_epoch, _, count = str(attempts or "").partition(":")
        found.append(
            QuarantinedKey(
                key=key,
                attempts=int(count) if count and of_epoch == (epoch or "0") else 0,
                machine=machine or None,
                at=utc(int(at_us)) if at_us else None,
            )
        )
    return tuple(found)


def _first_score(reply: list[Any]) -> int | None:
    """The score of a ZRANGEBYSCORE WITHSCORES LIMIT 0 1 as sent (no reply callback parses
    it): [member, score] in RESP2, [[member, score]] in RESP3; None for no member."""
    if not reply:
        return None
    pair = reply[0] if isinstance(reply[0], list) else reply
    return int(float(pair[1]))


def _progress(
    stats: ProcessStats,
    *,
    done: int,
    left: int,
    rate: float | None,
    shown: tuple[QuarantinedKey, ...],
    completed_us: int | None,
    backoff_ends_us: int | None,
) -> Progress:
    """The progress record of the figures read; the ETA follows from `left` at `rate`."""
    eta: float | None = None
    if left == 0 or stats.pass_complete:
        eta = 0.0
    elif rate:
        eta = left / rate * 60
    eta_us = None if eta is None else stats.now_us + round(eta * 1e6)
    if stats.pass_complete and completed_us:
        eta_us = completed_us
    at = utc(stats.now_us)
    assert at is not None
    return Progress(
        process_name=stats.process_name,
        pass_number=stats.pass_number,
        complete=stats.pass_complete,
        key_set_size=stats.key_set_size,
        keys_done=done,
        keys_quarantined=stats.quarantined,
        keys_in_backoff=stats.in_backoff,
        keys_held=stats.held,
        keys_left=left,
        rate_per_minute=rate,
        eta_seconds=eta,
        eta_at=utc(eta_us),
        at=at,
        pass_started_at=utc(stats.pass_started_us or None),
        pass_completed_at=utc(completed_us),
        backoff_ends_at=utc(backoff_ends_us),
        quarantined=shown,
        quarantined_total=stats.quarantined,
    )
