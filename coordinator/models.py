"""The records the coordinator hands out, and their JSON shapes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from coordinator.lease_id import compose

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
class Process:
    """A registered batch process and its key space."""

    process_name: str
    key_set_size: int
    lease_seconds: int

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
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Process:
        """A process object as the HTTP API returns it."""
        return cls(data["process_name"], int(data["key_set_size"]), int(data["lease_seconds"]))


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
            "external_id": str(compose(self.process_name, token)) if token else None,
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
        }

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
        )


def _moment(text: str | None) -> datetime | None:
    """An RFC 3339 time as an aware moment; one without a zone (the seed's) is UTC."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else epoch_us(moment)
