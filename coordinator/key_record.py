"""The key records: one key of a process, free or under a lease, its states, and what a bulk
retry of keys did."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coordinator.deprecation import deprecated
from coordinator.timestamps import optional_epoch_us, parse_moment, timestamp

# Every state a key can be in, as inspect.lua computes it; every surface (the key object, the
# CLI's listing and its --state choices, the per-process gauges) takes its states from here.
KEY_STATES = ("free", "held", "done", "backoff", "quarantined")


@dataclass(frozen=True, slots=True)
class BatchKey:
    """One key of a process, free or under a lease. Times are aware UTC moments of Redis TIME."""

    process_name: str
    key: int
    last_completed_at: datetime | None
    external_id: str | None = None
    machine: str | None = None
    started_at: datetime | None = None
    expires_at: datetime | None = None
    fencing_token: int | None = None
    # Batch runs: leases ended without completion since the last completion or pass start,
    # the key's state (free, held, done, backoff, quarantined) and, in backoff, until when.
    attempts: int = 0
    state: str = "free"
    retry_at: datetime | None = None
    # The key's saved checkpoint, carried only by grants and the key's own resource
    # (`with_checkpoint`), so listings stay small at a million keys.
    checkpoint: str | None = None
    with_checkpoint: bool = field(default=False, compare=False)
    # A grant that answered an earlier lease of the same request_id (HTTP 200, not 201).
    replayed: bool = field(default=False, compare=False)

    @property
    def held(self) -> bool:
        """Whether the key was under a lease when read."""
        return self.external_id is not None

    @property
    def last_completed_us(self) -> int | None:
        """Deprecated: `last_completed_at`, as microseconds since the epoch."""
        deprecated("BatchKey.last_completed_us", "BatchKey.last_completed_at")
        return optional_epoch_us(self.last_completed_at)

    @property
    def started_us(self) -> int | None:
        """Deprecated: `started_at`, as microseconds since the epoch."""
        deprecated("BatchKey.started_us", "BatchKey.started_at")
        return optional_epoch_us(self.started_at)

    @property
    def expires_us(self) -> int | None:
        """Deprecated: `expires_at`, as microseconds since the epoch."""
        deprecated("BatchKey.expires_us", "BatchKey.expires_at")
        return optional_epoch_us(self.expires_at)

    def to_json(self) -> dict[str, Any]:
        """The key object of the HTTP contract."""
        return {
            "external_id": self.external_id,
            "key": self.key,
            "last_completed_at": timestamp(self.last_completed_at),
            "machine": self.machine,
            "process_name": self.process_name,
            "started_at": timestamp(self.started_at),
            "expires_at": timestamp(self.expires_at),
            "fencing_token": self.fencing_token,
            "attempts": self.attempts,
            "state": self.state,
            "retry_at": timestamp(self.retry_at),
        } | ({"checkpoint": self.checkpoint} if self.with_checkpoint else {})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchKey:
        """A key object as the HTTP API returns it."""
        return cls(
            process_name=data["process_name"],
            key=int(data["key"]),
            last_completed_at=parse_moment(data["last_completed_at"]),
            external_id=data["external_id"],
            machine=data["machine"],
            started_at=parse_moment(data["started_at"]),
            expires_at=parse_moment(data["expires_at"]),
            fencing_token=data["fencing_token"],
            attempts=int(data.get("attempts") or 0),
            state=data.get("state") or ("held" if data["external_id"] else "free"),
            retry_at=parse_moment(data.get("retry_at")),
            checkpoint=data.get("checkpoint"),
            with_checkpoint="checkpoint" in data,
        )


@dataclass(frozen=True, slots=True)
class Redrive:
    """What a bulk retry did: how many of its keys were quarantined, in backoff or neither
    (free, held, done) before they were retried."""

    quarantined: int = 0
    backoff: int = 0
    other: int = 0

    @property
    def retried(self) -> int:
        """Every key the retry named (or found quarantined)."""
        return self.quarantined + self.backoff + self.other

    def __add__(self, more: Redrive) -> Redrive:
        return Redrive(self.quarantined + more.quarantined, self.backoff + more.backoff,
                       self.other + more.other)  # fmt: skip

    def to_json(self) -> dict[str, int]:
        """The answer of POST /api/v1/process/<name>/keys/retry."""
        return {"retried": self.retried, "quarantined": self.quarantined,
                "backoff": self.backoff, "other": self.other}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Redrive:
        """The answer as the HTTP API returns it."""
        return cls(int(data["quarantined"]), int(data["backoff"]), int(data["other"]))
