"""The records the coordinator hands out, and their JSON shapes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from coordinator.lease_id import external_id
from coordinator.validation import OUTCOMES

# Every kind of entry the scripts write to a process's history, in the order of a key's life
# and then a pass's; the OpenAPI enum is this list and tests/test_interrupted.py ties it to lua/.
EVENT_TYPES = (
    "registered",
    "granted",
    "renewed",
    *(f"released-{outcome}" for outcome in OUTCOMES),
    "revoked",
    "expired",
    "quarantined",
    "retried",
    "pass-started",
    "pass-completed",
    "pass-failed",
    "deleted",
)

# Every state a key can be in, as inspect.lua computes it; every surface (the key object, the
# CLI's listing and its --state choices, the per-process gauges) takes its states from here.
KEY_STATES = ("free", "held", "done", "backoff", "quarantined")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)  # UTC by construction: see rfc3339


def rfc3339(microseconds: int | None) -> str | None:
    """Microseconds since the epoch as RFC 3339 UTC with microseconds and `Z`."""
    if microseconds is None:
        return None
    # A naive UTC moment's isoformat() has no offset to strip, and is several times faster
    # than strftime on this path (three times per key object).
    return (_NAIVE_EPOCH + timedelta(microseconds=microseconds)).isoformat(
        "T", "microseconds"
    ) + "Z"


def from_rfc3339(text: str | None) -> int | None:
    """The inverse of `rfc3339`: microseconds since the epoch, or None."""
    if text is None:
        return None
    return epoch_us(datetime.fromisoformat(text))


def utc(us: int | None) -> datetime | None:
    """Microseconds since the epoch (Redis TIME, as the scripts count) as an aware UTC moment."""
    if us is None:
        return None
    return _EPOCH + timedelta(microseconds=us)


def epoch_us(moment: datetime) -> int:
    """An aware moment as microseconds since the epoch: the inverse of `utc`."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def timestamp(moment: datetime | None) -> str | None:
    """An aware moment as RFC 3339 UTC with microseconds and `Z` (whatever its zone)."""
    if moment is None:
        return None
    # Shifting the UTC offset onto the naive epoch is faster than astimezone + strftime.
    return (_NAIVE_EPOCH + (moment - _EPOCH)).isoformat("T", "microseconds") + "Z"


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


@dataclass(frozen=True, slots=True)
class Pass:
    """One sweep over a process's key space: complete when every key is done or quarantined."""

    number: int
    started_at: datetime
    completed_at: datetime | None = None
    keys_done: int = 0
    keys_quarantined: int = 0
    # Completed as failed: more keys were quarantined than the process's max_failed_keys.
    failed: bool = False

    @property
    def complete(self) -> bool:
        """Whether every key was done in this pass or is quarantined."""
        return self.completed_at is not None

    def to_json(self) -> dict[str, Any]:
        """The pass object of the HTTP contract."""
        return {
            "number": self.number,
            "started_at": timestamp(self.started_at),
            "completed_at": timestamp(self.completed_at),
            "keys_done": self.keys_done,
            "keys_quarantined": self.keys_quarantined,
            "failed": self.failed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pass:
        """A pass object as the HTTP API returns it."""
        started = _moment(data["started_at"])
        assert started is not None
        return cls(
            number=int(data["number"]),
            started_at=started,
            completed_at=_moment(data["completed_at"]),
            keys_done=int(data["keys_done"]),
            keys_quarantined=int(data["keys_quarantined"]),
            failed=bool(data.get("failed")),
        )


@dataclass(frozen=True, slots=True)
class Process:
    """A registered batch process: its key space, its batch-run options and its current pass."""

    process_name: str
    key_set_size: int
    lease_seconds: int
    mode: str = "rotate"
    max_attempts: int | None = None
    retry_backoff_seconds: int = 0
    # State, not configuration: two reads of one process compare equal as its pass moves on.
    # (`pass` is a Python keyword, hence the underscore; the JSON says "pass".)
    pass_: Pass | None = field(default=None, compare=False)
    # After `pass_`, so positional callers of the older fields are unchanged.
    max_failed_keys: int | None = None

    @property
    def name(self) -> str:
        """Deprecated: `process_name`, as the JSON names it."""
        _deprecated("Process.name", "Process.process_name")
        return self.process_name

    def to_json(self) -> dict[str, Any]:
        """The process object; `key_space_size` repeats `key_set_size` for the seed's readers."""
        return {
            "process_name": self.process_name,
            "key_set_size": self.key_set_size,
            "key_space_size": self.key_set_size,
            "lease_seconds": self.lease_seconds,
            "mode": self.mode,
            "max_attempts": self.max_attempts,
            "retry_backoff_seconds": self.retry_backoff_seconds,
            "max_failed_keys": self.max_failed_keys,
            "pass": None if self.pass_ is None else self.pass_.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Process:
        """A process object as the HTTP API returns it."""
        current = data.get("pass")
        return cls(
            data["process_name"],
            int(data["key_set_size"]),
            int(data["lease_seconds"]),
            mode=data.get("mode") or "rotate",
            max_attempts=data.get("max_attempts"),
            retry_backoff_seconds=int(data.get("retry_backoff_seconds") or 0),
            max_failed_keys=data.get("max_failed_keys"),
            pass_=Pass.from_json(current) if current else None,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a process's history (a Redis stream entry)."""

    id: str
    process_name: str
    type: str
    at_us: int
    key: int | None = None
    machine: str | None = None
    fencing_token: int | None = None

    @classmethod
    def from_stream(cls, process_name: str, entry_id: str, fields: dict[str, str]) -> Event:
        """An entry as the scripts write it: empty fields are absent values."""
        return cls(
            id=entry_id,
            process_name=process_name,
            type=fields.get("type", ""),
            at_us=int(fields.get("at_us") or 0),
            key=int(fields["key"]) if fields.get("key") else None,
            machine=fields.get("machine") or None,
            fencing_token=int(fields["token"]) if fields.get("token") else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The event object of the HTTP API; external_id is derived from the token."""
        token = self.fencing_token
        return {
            "id": self.id,
            "type": self.type,
            "process_name": self.process_name,
            "key": self.key,
            "machine": self.machine,
            "external_id": external_id(self.process_name, token) if token else None,
            "fencing_token": token,
            "at": rfc3339(self.at_us),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        """An event object as the HTTP API returns it."""
        return cls(
            id=data["id"],
            process_name=data["process_name"],
            type=data["type"],
            at_us=from_rfc3339(data["at"]) or 0,
            key=data["key"],
            machine=data["machine"],
            fencing_token=data["fencing_token"],
        )


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
        _deprecated("BatchKey.last_completed_us", "BatchKey.last_completed_at")
        return _us(self.last_completed_at)

    @property
    def started_us(self) -> int | None:
        """Deprecated: `started_at`, as microseconds since the epoch."""
        _deprecated("BatchKey.started_us", "BatchKey.started_at")
        return _us(self.started_at)

    @property
    def expires_us(self) -> int | None:
        """Deprecated: `expires_at`, as microseconds since the epoch."""
        _deprecated("BatchKey.expires_us", "BatchKey.expires_at")
        return _us(self.expires_at)

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
            last_completed_at=_moment(data["last_completed_at"]),
            external_id=data["external_id"],
            machine=data["machine"],
            started_at=_moment(data["started_at"]),
            expires_at=_moment(data["expires_at"]),
            fencing_token=data["fencing_token"],
            attempts=int(data.get("attempts") or 0),
            state=data.get("state") or ("held" if data["external_id"] else "free"),
            retry_at=_moment(data.get("retry_at")),
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


def _moment(text: str | None) -> datetime | None:
    """An RFC 3339 time as an aware moment; one without a zone (the seed's) is UTC."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else epoch_us(moment)
