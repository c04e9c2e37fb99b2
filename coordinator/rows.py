"""The scripts' replies as records: one place reads inspect.lua's rows and staleness scores."""

from __future__ import annotations

from typing import Any

from coordinator import lease_id
from coordinator.models import BatchKey, utc


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
