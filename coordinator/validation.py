"""Checks on every value a caller can pass in, shared by the HTTP API and direct workers."""

from __future__ import annotations

import re

from coordinator.errors import InvalidField
from coordinator.route_words import ROUTE_WORDS

PROCESS_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
PROCESS_NAME_MAX = 128
MACHINE_MAX = 256
LEASE_SECONDS_MAX = 86_400
WAIT_SECONDS_MAX = 60
# How a worker ends its lease (DELETE .../batch_keys/<id>?outcome=): `completed` stamps the
# key's completion, `failed` counts an attempt, `interrupted` (a stop, a deploy) gives the key
# back as it was, `fatal` (the work can never succeed as it is) quarantines the key at once,
# whatever its retry budget. Each is recorded as the event `released-<outcome>`
# (models.EVENT_TYPES).
OUTCOMES = ("completed", "failed", "interrupted", "fatal")
# An administrator's end of a lease (Store.revoke): as `failed`, recorded as `revoked`.
REVOKED = "revoked"
# Bounds the Lua scripts enforce themselves, for direct callers that skip this module (each
# script declares the same numbers; tests/test_script_bounds.py ties the two).
KEY_SET_SIZE_LIMIT = 1 << 40  # the largest maximum a deployment may configure
EVENTS_CAP_MAX = 10_000_000
INSPECT_COUNT_MAX = 10_000  # keys one inspect.lua call reads, so no call runs long
MACHINE_BYTES_MAX = MACHINE_MAX * 4  # MACHINE_MAX characters of up to 4 bytes in UTF-8
HOLDER_MAX = 64  # hex digits of a lease holder's id
DELETED_HISTORY_SECONDS_MIN = 86_400  # an ended lease answers 410 for at least a day
DELETED_HISTORY_SECONDS_MAX = 31_536_000
DELETED_HISTORY_SECONDS_DEFAULT = 604_800
# Batch runs (README "Batch runs"): the process options and what workers send.
MODES = ("rotate", "once")
MAX_ATTEMPTS_MAX = 1000
RETRY_BACKOFF_SECONDS_MAX = 3600
CHECKPOINT_BYTES_MAX = 4096
REQUEST_ID_MAX = 128  # characters
REQUEST_ID_BYTES_MAX = REQUEST_ID_MAX * 4  # the scripts' bound: 128 characters of UTF-8
PASSES_KEPT = 100
PASS_NUMBER_MAX = (1 << 53) - 1

# Query parameters (one page of keys or events; Redis reads each part of an event id, a
# stream id, as an unsigned 64-bit integer).
PAGE_MAX = 10_000
EVENTS_PAGE_DEFAULT = 100
# A key number (GET /api/v1/process/<name>/keys/<key>, ?after=): at most the last key of the
# largest key set; past the process's own last key a key is 404 unknown_key.
KEY_MAX = KEY_SET_SIZE_LIMIT - 1
KEY_AFTER_MAX = KEY_MAX
# A bulk retry (POST .../keys/retry): at most RETRY_KEYS_MAX keys named in one request (a body
# well under MAX_BODY_BYTES), retried RETRY_CHUNK per retry_key.lua call (its CHUNK_MAX), so
# no call holds Redis long.
RETRY_KEYS_MAX = 1000
RETRY_CHUNK = 250
EVENT_ID_PART_MAX = (1 << 64) - 1
EVENT_ID_LAST = f"{EVENT_ID_PART_MAX}-{EVENT_ID_PART_MAX}"  # nothing can follow it

_PROCESS_NAME = re.compile(PROCESS_NAME_PATTERN)


class Unset:
    """The type of UNSET: a field left out, told apart from one sent as null."""


UNSET = Unset()


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


def new_process_name(value: object, field: str = "process_name") -> str:
    """A name to register: a valid name that is not a word of the API's paths, whose routes
    it would share (route_words). A process so named before is still read and deleted."""
    name = process_name(value, field)
    if name in ROUTE_WORDS:
        reserved = ", ".join(ROUTE_WORDS)
        raise InvalidField(
            field, f"may not be '{name}': the API's paths use it as a word (reserved: {reserved})"
        )
    return name


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


def key(value: object) -> int:
    """A key number: any integer (one outside the process's keys is its UnknownKey)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidField("key", "must be an integer")
    return value


def key_list(value: object, field: str = "keys") -> list[int]:
    """1 to RETRY_KEYS_MAX key numbers, each 0 to KEY_MAX, without repeats (first kept)."""
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= RETRY_KEYS_MAX:
        raise InvalidField(field, f"must be a list of 1 to {RETRY_KEYS_MAX} key numbers")
    for item in value:
        _integer(item, field, 0, KEY_MAX)
    return list(dict.fromkeys(value))


def outcome(value: object) -> str:
    """How the work on a released key ended."""
    if value not in OUTCOMES:
        *others, last = (f"'{o}'" for o in OUTCOMES)
        raise InvalidField("outcome", f"must be {', '.join(others)} or {last}")
    return str(value)


def _integer(value: object, field: str, low: int, high: int) -> int:
    # bool is an int subclass in Python, but JSON `true` is not a number of keys.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidField(field, f"must be an integer from {low} to {high}")
    if not low <= value <= high:
        raise InvalidField(field, f"must be an integer from {low} to {high}, not {value}")
    return value


def _decimal_at_most(bound: int) -> str:
    """A regex (Python's and JSON Schema's alike) for the decimals 0 to `bound`, written
    without leading zeros."""
    digits = str(bound)
    shorter = ["0"] + ([f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else [])
    # Same length as `bound`: its first i digits, then a smaller digit, then any digits.
    same_length = [
        f"{digits[:i]}[{int(i == 0)}-{int(d) - 1}][0-9]{{{len(digits) - i - 1}}}"
        for i, d in enumerate(digits)
        if int(d) > int(i == 0)
    ]
    return f"(?:{'|'.join([*shorter, *same_length, digits])})"


_EVENT_ID_PART = _decimal_at_most(EVENT_ID_PART_MAX)
# "-" (before the first event) or <milliseconds>-<sequence>, as Redis accepts them.
EVENT_ID_PATTERN = rf"^(?:-|{_EVENT_ID_PART}-{_EVENT_ID_PART})$"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)


def event_id(value: object, field: str = "after") -> str:
    """An event id to read after: "-" (from the first event) or one such as 1764000000000-0,
    each part 0 to 2**64 - 1."""
    # fullmatch, not match: with match, `$` would accept a trailing newline.
    if not isinstance(value, str) or not _EVENT_ID.fullmatch(value):
        raise InvalidField(
            field,
            "must be - or an event id such as 1764000000000-0, each part an integer from 0 to"
            f" {EVENT_ID_PART_MAX}",
        )
    return value


def mode(value: object) -> str:
    """A process's mode: `rotate` (keys are granted again and again) or `once` per pass."""
    if value not in MODES:
        raise InvalidField("mode", "must be 'rotate' or 'once'")
    return str(value)


def max_attempts(value: object) -> int | None:
    """Failed leases in a row before a key is quarantined: 1 to 1000, or None for no limit."""
    return None if value is None else _integer(value, "max_attempts", 1, MAX_ATTEMPTS_MAX)


def max_failed_keys(value: object, size: int, mode: str) -> int | None:
    """Quarantined keys a `once` pass tolerates before it fails: 0 to key_set_size, or None
    for no limit. A rotate pass never ends for good, so the option is refused there."""
    if value is None:
        return None
    count = _integer(value, "max_failed_keys", 0, size)
    if mode != "once":
        raise InvalidField("max_failed_keys", "applies only to mode 'once' (a pass that ends)")
    return count


def retry_backoff_seconds(value: object) -> int:
    """Seconds a key waits after its first failed lease (doubling after each): 0 to 3600."""
    return _integer(value, "retry_backoff_seconds", 0, RETRY_BACKOFF_SECONDS_MAX)


def checkpoint(value: object) -> str | None:
    """A worker's saved progress: a string of at most 4096 UTF-8 bytes, or None to clear."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField("checkpoint", "must be a string or null")
    if len(value.encode()) > CHECKPOINT_BYTES_MAX:
        raise InvalidField("checkpoint", f"must be at most {CHECKPOINT_BYTES_MAX} UTF-8 bytes")
    return value


def request_id(value: object) -> str | None:
    """A client's id for one acquisition, so a retried grant answers the same lease."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= REQUEST_ID_MAX:
        raise InvalidField("request_id", f"must be a string of 1 to {REQUEST_ID_MAX} characters")
    return value


def pass_number(value: object, field: str = "pass") -> int:
    """A pass number, from 1."""
    return _integer(value, field, 1, PASS_NUMBER_MAX)
