"""The event record: one entry of a process's history, its type vocabulary and its JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.lease_id import external_id
from coordinator.timestamps import from_rfc3339, rfc3339
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
