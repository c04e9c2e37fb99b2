"""The records the coordinator hands out, and their JSON shapes: one import for them all.

Each record lives in the module of its concept (`key_record`, `process_record`,
`event_record`; times in `timestamps`); this module gathers them, so `coordinator.models`
stays where clients, the CLI and the API reference find them.
"""

from __future__ import annotations

from coordinator.event_record import EVENT_TYPES, Event
from coordinator.key_record import KEY_STATES, BatchKey, Redrive
from coordinator.process_record import Pass, Process
from coordinator.timestamps import epoch_us, from_rfc3339, rfc3339, timestamp, utc

__all__ = [
    "EVENT_TYPES",
    "KEY_STATES",
    "BatchKey",
    "Event",
    "Pass",
    "Process",
    "Redrive",
    "epoch_us",
    "from_rfc3339",
    "rfc3339",
    "timestamp",
    "utc",
]
