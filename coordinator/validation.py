"""Checks on every value a caller can pass in, shared by the HTTP API and direct workers."""

from __future__ import annotations

import re

from coordinator.errors import InvalidField

PROCESS_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
PROCESS_NAME_MAX = 128
MACHINE_MAX = 256
LEASE_SECONDS_MAX = 86_400
WAIT_SECONDS_MAX = 60
OUTCOMES = ("completed", "failed")

_PROCESS_NAME = re.compile(PROCESS_NAME_PATTERN)


def process_name(value: object, field: str = "process_name") -> str:
    """A name that can only ever become a key inside the service's own namespace."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    if not 1 <= len(value) <= PROCESS_NAME_MAX:
        raise InvalidField(field, f"must be 1 to {PROCESS_NAME_MAX} characters long")
    # fullmatch, not match: with match, `$` would accept a trailing newline.
    if not _PROCESS_NAME.fullmatch(value):
        raise InvalidField(
            field, "may hold only letters, digits and . _ : - and must start with a letter or digit"
        )
    return value


def key_set_size(value: object, maximum: int) -> int:
    """An integer number of keys from 1 to the configured maximum."""
    return _integer(value, "key_set_size", 1, maximum)


def lease_seconds(value: object, field: str = "lease_seconds") -> int:
    """An integer number of seconds from 1 to a day."""
    return _integer(value, field, 1, LEASE_SECONDS_MAX)


def wait_seconds(value: object) -> float:
    """How long a key request may wait for a free key: 0 to 60 seconds."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidField("wait_seconds", f"must be a number from 0 to {WAIT_SECONDS_MAX}")
    if not 0 <= value <= WAIT_SECONDS_MAX:
        raise InvalidField(
            "wait_seconds", f"must be a number from 0 to {WAIT_SECONDS_MAX}, not {value}"
        )
    return float(value)


def machine(value: object) -> str:
    """Any string of 1 to 256 characters."""
    if not isinstance(value, str):
        raise InvalidField("machine", "must be a string")
    if not 1 <= len(value) <= MACHINE_MAX:
        raise InvalidField("machine", f"must be 1 to {MACHINE_MAX} characters long")
    return value


def outcome(value: object) -> str:
    """How the work on a released key ended."""
    if value not in OUTCOMES:
        raise InvalidField("outcome", "must be 'completed' or 'failed'")
    return str(value)


def _integer(value: object, field: str, low: int, high: int) -> int:
    # bool is an int subclass in Python, but JSON `true` is not a number of keys.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidField(field, f"must be an integer from {low} to {high}")
    if not low <= value <= high:
        raise InvalidField(field, f"must be an integer from {low} to {high}, not {value}")
    return value
