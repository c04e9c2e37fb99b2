"""The OpenAPI schemas of the progress object (`coordinator.progress`), for coordinator.openapi.

Its bounds and window come from the module that declares them, so the document says what the
reader does.
"""

from __future__ import annotations

from typing import Any

from coordinator.progress import ETA_MIN_KEYS_DONE, QUARANTINED_SHOWN_MAX, RATE_WINDOW_SECONDS

_COUNT = {"type": "integer", "minimum": 0}
_TIME = {"type": ["string", "null"], "format": "date-time"}


def _fixed(value: int) -> dict[str, Any]:
    """A figure this version fixes (no `const`: openapi-python-client 0.29 writes broken
    code for an integer one)."""
    return {"type": "integer", "minimum": 1, "description": f"{value} in this version."}


_UNKNOWN = f"null: unknown, fewer than {ETA_MIN_KEYS_DONE} keys done in the window"

PROGRESS_SCHEMAS: dict[str, dict[str, Any]] = {
    "QuarantinedKey": {
        "type": "object",
        "required": ["key", "attempts", "machine", "at"],
        "properties": {
            "key": _COUNT,
            "attempts": _COUNT,
            "machine": {
                "type": ["string", "null"],
                "description": "The machine of the lease whose end quarantined the key; null"
                " when not recorded.",
            },
            "at": {
                **_TIME,
                "description": "When the lease ending that quarantined the key was seen; null"
                " when not recorded (quarantined by an older version).",
            },
        },
    },
    "Progress": {
        "type": "object",
        "required": [
            "process_name",
            "pass",
            "complete",
            "key_set_size",
            "keys_done",
            "keys_quarantined",
            "keys_in_backoff",
            "keys_held",
            "keys_left",
            "rate_per_minute",
            "rate_window_seconds",
            "eta_seconds",
            "eta_at",
            "quarantined",
            "quarantined_total",
            "quarantined_shown_max",
        ],
        "properties": {
            "process_name": {"type": "string"},
            "pass": {"type": "integer", "minimum": 1, "description": "The current pass."},
            "complete": {"type": "boolean"},
            "key_set_size": {"type": "integer", "minimum": 1},
            "keys_done": {**_COUNT, "description": "Done in the current pass."},
            "keys_quarantined": _COUNT,
            "keys_in_backoff": {**_COUNT, "description": "Whose backoff has not yet ended."},
            "keys_held": {**_COUNT, "description": "Under a lease that has not expired."},
            "keys_left": {**_COUNT, "description": "Neither done nor quarantined."},
            "rate_per_minute": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Keys done per minute over the last `rate_window_seconds` of"
                f" the pass; {_UNKNOWN}.",
            },
            "rate_window_seconds": _fixed(RATE_WINDOW_SECONDS),
            "eta_seconds": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": f"Until no key is left, at the rate; 0 once none is; {_UNKNOWN}.",
            },
            "eta_at": _TIME,
            "eta_min_keys_done": _fixed(ETA_MIN_KEYS_DONE),
            "at": {"type": "string", "format": "date-time", "description": "When read."},
            "pass_started_at": _TIME,
            "pass_completed_at": _TIME,
            "backoff_ends_at": {
                **_TIME,
                "description": "When the first backoff not yet ended ends; null: none.",
            },
            "quarantined": {
                "type": "array",
                "maxItems": QUARANTINED_SHOWN_MAX,
                "items": {"$ref": "#/components/schemas/QuarantinedKey"},
                "description": "The first `quarantined_shown_max` quarantined keys.",
            },
            "quarantined_total": _COUNT,
            "quarantined_shown_max": _fixed(QUARANTINED_SHOWN_MAX),
        },
    },
}
