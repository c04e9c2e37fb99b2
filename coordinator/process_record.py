"""The process record and its pass: a registered process's key space, batch-run options and
current sweep, and their JSON objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coordinator.deprecation import deprecated
from coordinator.timestamps import parse_moment, timestamp


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
        started = parse_moment(data["started_at"])
        assert started is not None
        return cls(
            number=int(data["number"]),
            started_at=started,
            completed_at=parse_moment(data["completed_at"]),
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
        deprecated("Process.name", "Process.process_name")
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
