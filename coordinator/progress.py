"""A process's progress through its current pass, as people read it: keys done, quarantined,
in backoff and held, the recent completion rate, an ETA, and the quarantined keys themselves.

The figures are read by `coordinator.progress_read`; this module is the record and its JSON
(GET /api/v1/process/{name}/progress, `coordinator pass show`, the dashboard).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coordinator.models import from_rfc3339, timestamp, utc

# The recent past the rate is measured over (clipped to the pass's start).
RATE_WINDOW_SECONDS = 600
# Keys done within the window below which the rate and the ETA are unknown (null): a rate
# from one or two completions says more about chance than about the run.
ETA_MIN_KEYS_DONE = 3
# Quarantined keys listed at most; `quarantined_total` says how many there are.
QUARANTINED_SHOWN_MAX = 100


@dataclass(frozen=True, slots=True)
class QuarantinedKey:
    """A key quarantined in the current pass: its attempts, and where its last failure ran."""

    key: int
    attempts: int
    machine: str | None = None  # None: not recorded (quarantined before machines were kept)
    at: datetime | None = None  # when it was quarantined, if known

    def to_json(self) -> dict[str, Any]:
        """The quarantined key object of the progress object."""
        return {
            "key": self.key,
            "attempts": self.attempts,
            "machine": self.machine,
            "at": timestamp(self.at),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuarantinedKey:
        """A quarantined key object as the HTTP API returns it."""
        return cls(
            key=int(data["key"]),
            attempts=int(data["attempts"]),
            machine=data.get("machine"),
            at=utc(from_rfc3339(data.get("at"))),
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """One process's current pass as it stood at `at`."""

    process_name: str
    pass_number: int
    complete: bool
    key_set_size: int
    keys_done: int
    keys_quarantined: int
    keys_in_backoff: int
    keys_held: int
    keys_left: int  # neither done nor quarantined (free, held or in backoff)
    rate_per_minute: float | None  # None: fewer than ETA_MIN_KEYS_DONE done in the window
    eta_seconds: float | None  # None: unknown (as the rate); 0 once nothing is left
    eta_at: datetime | None
    at: datetime
    pass_started_at: datetime | None = None
    pass_completed_at: datetime | None = None
    backoff_ends_at: datetime | None = None  # the first end of a backoff not yet ended
    quarantined: tuple[QuarantinedKey, ...] = field(default_factory=tuple)
    quarantined_total: int = 0
    rate_window_seconds: int = RATE_WINDOW_SECONDS
    eta_min_keys_done: int = ETA_MIN_KEYS_DONE
    quarantined_shown_max: int = QUARANTINED_SHOWN_MAX

    def to_json(self) -> dict[str, Any]:
        """The progress object of the HTTP contract."""
        return {
            "process_name": self.process_name,
            "pass": self.pass_number,
            "complete": self.complete,
            "key_set_size": self.key_set_size,
            "keys_done": self.keys_done,
            "keys_quarantined": self.keys_quarantined,
            "keys_in_backoff": self.keys_in_backoff,
            "keys_held": self.keys_held,
            "keys_left": self.keys_left,
            "rate_per_minute": self.rate_per_minute,
            "rate_window_seconds": self.rate_window_seconds,
            "eta_seconds": self.eta_seconds,
            "eta_at": timestamp(self.eta_at),
            "eta_min_keys_done": self.eta_min_keys_done,
            "at": timestamp(self.at),
            "pass_started_at": timestamp(self.pass_started_at),
            "pass_completed_at": timestamp(self.pass_completed_at),
            "backoff_ends_at": timestamp(self.backoff_ends_at),
            "quarantined": [key.to_json() for key in self.quarantined],
            "quarantined_total": self.quarantined_total,
            "quarantined_shown_max": self.quarantined_shown_max,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        """A progress object as the HTTP API returns it."""
        at = utc(from_rfc3339(data["at"]))
        assert at is not None
        rate, eta = data["rate_per_minute"], data["eta_seconds"]
        return cls(
            process_name=data["process_name"],
            pass_number=int(data["pass"]),
            complete=bool(data["complete"]),
            key_set_size=int(data["key_set_size"]),
            keys_done=int(data["keys_done"]),
            keys_quarantined=int(data["keys_quarantined"]),
            keys_in_backoff=int(data["keys_in_backoff"]),
            keys_held=int(data["keys_held"]),
            keys_left=int(data["keys_left"]),
            rate_per_minute=None if rate is None else float(rate),
            eta_seconds=None if eta is None else float(eta),
            eta_at=utc(from_rfc3339(data["eta_at"])),
            at=at,
            pass_started_at=utc(from_rfc3339(data.get("pass_started_at"))),
            pass_completed_at=utc(from_rfc3339(data.get("pass_completed_at"))),
            backoff_ends_at=utc(from_rfc3339(data.get("backoff_ends_at"))),
            quarantined=tuple(QuarantinedKey.from_json(q) for q in data["quarantined"]),
            quarantined_total=int(data["quarantined_total"]),
            rate_window_seconds=int(data["rate_window_seconds"]),
            eta_min_keys_done=int(data.get("eta_min_keys_done", ETA_MIN_KEYS_DONE)),
            quarantined_shown_max=int(data["quarantined_shown_max"]),
        )
