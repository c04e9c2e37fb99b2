"""How the CLI prints records: aligned tables for people, JSON for scripts."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from coordinator.models import BatchKey, Event, Process, rfc3339


def as_json(records: Process | BatchKey | Sequence[Process | BatchKey]) -> str:
    """The same JSON the HTTP API returns."""
    if isinstance(records, Process | BatchKey):
        return orjson.dumps(records.to_json()).decode()
    return orjson.dumps([r.to_json() for r in records]).decode()


def event_line(event: Event, *, as_json: bool) -> str:
    """One event per line: JSON, or time, type, key, machine and token."""
    if as_json:
        return orjson.dumps(event.to_json()).decode()
    fields = [rfc3339(event.at_us) or "", event.type.ljust(18)]
    if event.key is not None:
        fields.append(f"key={event.key} machine={event.machine} token={event.fencing_token}")
    return "  ".join(fields)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def processes_table(processes: Sequence[Process]) -> str:
    """One line per process."""
    rows = [["PROCESS", "KEYS", "LEASE_SECONDS"]]
    rows += [[p.name, str(p.key_set_size), str(p.lease_seconds)] for p in processes]
    return table(rows)


def keys_table(keys: Sequence[BatchKey]) -> str:
    """One line per key."""
    rows = [["KEY", "STATE", "MACHINE", "TOKEN", "EXPIRES_AT", "LAST_COMPLETED_AT", "EXTERNAL_ID"]]
    rows += [
        [
            str(k.key),
            "held" if k.held else "free",
            k.machine or "-",
            "-" if k.fencing_token is None else str(k.fencing_token),
            rfc3339(k.expires_us) or "-",
            rfc3339(k.last_completed_us) or "never",
            k.external_id or "-",
        ]
        for k in keys
    ]
    return table(rows)
