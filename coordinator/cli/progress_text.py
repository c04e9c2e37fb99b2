"""How `coordinator pass show` prints a process's progress: a one-row table of the counts,
the rate and the ETA, then the quarantined keys; or the progress object as JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from coordinator.models import timestamp
from coordinator.output import table
from coordinator.progress import Progress

PROGRESS_HEADER = (
    "PROCESS", "PASS", "STARTED_AT", "COMPLETED_AT", "KEYS_DONE", "KEYS_QUARANTINED",
    "IN_BACKOFF", "HELD", "LEFT", "RATE_PER_MIN", "ETA",
)  # fmt: skip
QUARANTINED_HEADER = ("KEY", "ATTEMPTS", "MACHINE", "QUARANTINED_AT")
# A null rate or ETA: fewer keys done in the window than the rate needs.
UNKNOWN = "unknown"


def progress_json(progress: Progress) -> str:
    """The progress object, with the pass object's own names for what it shares with it
    (`number`, `started_at`, `completed_at`), so what read `pass show --json` reads on."""
    fields: dict[str, Any] = {
        "number": progress.pass_number,
        "started_at": timestamp(progress.pass_started_at),
        "completed_at": timestamp(progress.pass_completed_at),
    }
    return orjson.dumps({**fields, **progress.to_json()}).decode()


def progress_text(progress: Progress) -> str:
    """The counts, rate and ETA as one table row; the quarantined keys below, when any."""
    rate = UNKNOWN if progress.rate_per_minute is None else f"{progress.rate_per_minute:.1f}"
    row = (
        progress.process_name,
        str(progress.pass_number),
        iso_utc(progress.pass_started_at),
        iso_utc(progress.pass_completed_at),
        str(progress.keys_done),
        str(progress.keys_quarantined),
        str(progress.keys_in_backoff),
        str(progress.keys_held),
        str(progress.keys_left),
        rate,
        UNKNOWN if progress.eta_at is None else iso_utc(progress.eta_at),
    )
    text = table([PROGRESS_HEADER, row])
    if not progress.quarantined:
        return text
    shown = len(progress.quarantined)
    heading = f"quarantined keys ({shown} of {progress.quarantined_total}):"
    if shown < progress.quarantined_total:
        heading = f"quarantined keys (the first {shown} of {progress.quarantined_total}):"
    rows = [
        (str(q.key), str(q.attempts), q.machine or "-", iso_utc(q.at)) for q in progress.quarantined
    ]
    return f"{text}\n\n{heading}\n{table([QUARANTINED_HEADER, *rows])}"


def iso_utc(moment: datetime | None) -> str:
    """ISO 8601 UTC to the second (a person reads it; the JSON keeps the microseconds)."""
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
