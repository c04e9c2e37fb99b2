"""How the CLI prints records: aligned tables for people, JSON for scripts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice

import orjson

from coordinator.models import BatchKey, Event, Pass, Process, rfc3339, timestamp

KEYS_HEADER = ("KEY", "STATE", "MACHINE", "TOKEN", "EXPIRES_AT", "LAST_COMPLETED_AT", "EXTERNAL_ID")
PROCESSES_HEADER = ("PROCESS", "KEYS", "LEASE_SECONDS")
# A streamed table takes its column widths from the header and this many first rows.
SIZING_ROWS = 1000


def as_json(records: Process | BatchKey | Pass | Sequence[Process | BatchKey]) -> str:
    """The same JSON the HTTP API returns."""
    if isinstance(records, Process | BatchKey | Pass):
        return orjson.dumps(records.to_json()).decode()
    return orjson.dumps([r.to_json() for r in records]).decode()


def event_line(event: Event, *, as_json: bool) -> str:
    """One event per line: JSON, or time, type, key, machine and token."""
    if as_json:
        return orjson.dumps(event.to_json()).decode()
    fields = [rfc3339(event.at_us) or "", event.type.ljust(18)]
    if event.key is not None:
        fields.append(f"key={event.key} machine={event.machine} token={event.fencing_token}")
    return "  ".join(fields).rstrip()


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def processes_table(processes: Sequence[Process]) -> str:
    """One line per process."""
    return table([PROCESSES_HEADER, *(_process_row(p) for p in processes)])


def process_table_lines(processes: Iterable[Process]) -> Iterator[str]:
    """The processes as table lines, produced as they are read (sized as key_table_lines)."""
    return _streamed_table(PROCESSES_HEADER, (_process_row(p) for p in processes))


def _process_row(p: Process) -> tuple[str, ...]:
    return (p.process_name, str(p.key_set_size), str(p.lease_seconds))


def pass_table(process_name: str, found: Pass) -> str:
    """One pass of a process on one line."""
    rows = [["PROCESS", "PASS", "STARTED_AT", "COMPLETED_AT", "KEYS_DONE", "KEYS_QUARANTINED"]]
    rows.append([
        process_name, str(found.number), timestamp(found.started_at) or "-",
        timestamp(found.completed_at) or "-", str(found.keys_done), str(found.keys_quarantined),
    ])  # fmt: skip
    return table(rows)


def key_detail(key: BatchKey) -> str:
    """One key, a field per line: its batch-run state and checkpoint as well."""
    fields = [
        ("process_name", key.process_name),
        ("key", str(key.key)),
        ("state", key.state),
        ("attempts", str(key.attempts)),
        ("retry_at", timestamp(key.retry_at) or "-"),
        ("last_completed_at", timestamp(key.last_completed_at) or "never"),
        ("machine", key.machine or "-"),
        ("fencing_token", "-" if key.fencing_token is None else str(key.fencing_token)),
        ("expires_at", timestamp(key.expires_at) or "-"),
        ("external_id", key.external_id or "-"),
        ("checkpoint", "-" if key.checkpoint is None else repr(key.checkpoint)),
    ]
    return table([(name.upper(), value) for name, value in fields])


def keys_table(keys: Sequence[BatchKey]) -> str:
    """One line per key."""
    return table([KEYS_HEADER, *(_key_row(k) for k in keys)])


def key_table_lines(keys: Iterable[BatchKey]) -> Iterator[str]:
    """The keys as table lines, produced as they are read rather than held all at once.

    The columns are as wide as the header and the first SIZING_ROWS rows need; a later,
    longer cell widens only its own line.
    """
    return _streamed_table(KEYS_HEADER, (_key_row(k) for k in keys))


def _streamed_table(header: tuple[str, ...], rows: Iterator[tuple[str, ...]]) -> Iterator[str]:
    """Table lines as the rows are read: widths from the header and the first SIZING_ROWS."""
    first = [header, *islice(rows, SIZING_ROWS)]
    widths = [max(len(row[i]) for row in first) for i in range(len(header))]
    for row in chain(first, rows):
        yield "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


def json_line(record: BatchKey | Event) -> bytes:
    """One record as one line of JSON Lines, newline included."""
    return orjson.dumps(record.to_json(), option=orjson.OPT_APPEND_NEWLINE)


def _key_row(k: BatchKey) -> tuple[str, ...]:
    # The state the store read with the key (inspect.lua), never one worked out here again.
    return (
        str(k.key),
        k.state,
        k.machine or "-",
        "-" if k.fencing_token is None else str(k.fencing_token),
        timestamp(k.expires_at) or "-",
        timestamp(k.last_completed_at) or "never",
        k.external_id or "-",
    )
