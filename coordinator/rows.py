"""The scripts' replies as records: one place reads inspect.lua's rows and staleness scores.

A row becomes either a `BatchKey` (direct workers, one key's resource) or, for listings, the
key object's JSON straight away (`key_objects`): a million-key listing spent most of its
event-loop time building records only to turn them into dicts. tests/test_key_rows.py holds
the two to the same bytes for keys in every state.
"""

from __future__ import annotations

import functools
from datetime import date, timedelta
from typing import Any

from coordinator import lease_id
from coordinator.models import BatchKey, utc

_DAY_US = 86_400_000_000
_EPOCH_DAY = date(1970, 1, 1)
_MINUTES = tuple(f"{hour:02d}:{minute:02d}:" for hour in range(24) for minute in range(60))
_SECONDS = tuple(f"{second:02d}." for second in range(60))


def completed(last: int) -> int | None:
    """A staleness score as a completion time: negative scores mean never completed."""
    return last if last >= 0 else None


def batch_key_of(name: str, row: list[Any], *, with_checkpoint: bool = False) -> BatchKey:
    """One row of inspect.lua as a key object."""
    key, last, token, started, expires, machine, attempts, state, retry_at, checkpoint = row
    held = state == "held"
    return BatchKey(
        name,
        int(key),
        utc(completed(int(last))),
        lease_id.external_id(name, token) if held else None,
        machine if held else None,
        utc(int(started)) if held else None,
        utc(int(expires)) if held else None,
        int(token) if held else None,
        attempts=int(attempts),
        state=str(state),
        retry_at=utc(int(retry_at) or None),
        checkpoint=checkpoint if isinstance(checkpoint, str) else None,
        with_checkpoint=with_checkpoint,
    )


def key_objects(name: str, rows: list[list[Any]]) -> list[dict[str, Any]]:
    """Rows of inspect.lua as the key objects of a listing (`BatchKey.to_json` of
    `batch_key_of`, without a checkpoint), built without the records."""
    objects = []
    for key, last, token, started, expires, machine, attempts, state, retry_at, _ in rows:
        held = state == "held"
        last_us, retry_us = int(last), int(retry_at)
        objects.append(
            {
                "external_id": lease_id.external_id(name, token) if held else None,
                "key": int(key),
                "last_completed_at": _rfc3339(last_us) if last_us >= 0 else None,
                "machine": machine if held else None,
                "process_name": name,
                "started_at": _rfc3339(int(started)) if held else None,
                "expires_at": _rfc3339(int(expires)) if held else None,
                "fencing_token": int(token) if held else None,
                "attempts": int(attempts),
                "state": str(state),
                "retry_at": _rfc3339(retry_us) if retry_us else None,
            }
        )
    return objects


def _rfc3339(us: int) -> str:
    """`models.rfc3339` at half its cost: a listing's keys share a few days, and a day's
    minutes and a minute's seconds are spelt once, so only the fraction is formatted per key."""
    day, of_day = divmod(us, _DAY_US)
    seconds, fraction = divmod(of_day, 1_000_000)
    minutes, second = divmod(seconds, 60)
    return f"{_day(day)}{_MINUTES[minutes]}{_SECONDS[second]}{fraction:06d}Z"


@functools.lru_cache(maxsize=1024)
def _day(day: int) -> str:
    """The date part of day `day` since the epoch, `YYYY-MM-DDT`."""
    return (_EPOCH_DAY + timedelta(days=day)).isoformat() + "T"
