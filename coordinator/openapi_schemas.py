"""The OpenAPI component schemas of the records and request bodies (all but the progress
object's, in coordinator.openapi_progress); enums and bounds come from their declarations."""

from __future__ import annotations

from coordinator import validation
from coordinator.auth import ROLES
from coordinator.models import EVENT_TYPES, KEY_STATES
from coordinator.openapi_params import PROCESS_NAME
from coordinator.openapi_responses import Schema, ref
from coordinator.problems import PROBLEMS
from coordinator.route_words import ROUTE_WORDS

# A name to register: not a word of the API's paths (validation.new_process_name).
_NEW_PROCESS_NAME = {
    **PROCESS_NAME,
    "not": {"enum": list(ROUTE_WORDS)},
    "description": f"Not a word of the API's paths: {', '.join(ROUTE_WORDS)}.",
}
_LEASE = {"type": "integer", "minimum": 1, "maximum": validation.LEASE_SECONDS_MAX}
# An optional request field may also be null, which means the same as leaving it out.
_OPTIONAL_LEASE = {**_LEASE, "type": ["integer", "null"]}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_MAX_ATTEMPTS = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": validation.MAX_ATTEMPTS_MAX,
    "default": None,
}
_MAX_FAILED_KEYS = {
    "type": ["integer", "null"],
    "minimum": 0,
    "maximum": validation.KEY_SET_SIZE_LIMIT,
    "default": None,
    "description": "`once` mode only (refused on rotate), at most key_set_size: a pass in which"
    " more keys than this are quarantined completes as failed (pass.failed, 409 pass_failed).",
}
_BACKOFF = {
    "type": "integer",
    "minimum": 0,
    "maximum": validation.RETRY_BACKOFF_SECONDS_MAX,
    "default": 0,
}

SCHEMAS: dict[str, Schema] = {
    "Mode": {
        "type": "string",
        "enum": list(validation.MODES),
        "description": "`rotate`: keys are granted again and again; `once`: each key once per"
        " pass.",
    },
    "Pass": {
        "type": "object",
        "required": ["number", "started_at", "completed_at", "keys_done", "keys_quarantined"],
        "properties": {
            "number": {"type": "integer", "minimum": 1},
            "started_at": {"type": "string", "format": "date-time"},
            "completed_at": _TIME,
            "keys_done": {"type": "integer", "minimum": 0},
            "keys_quarantined": {"type": "integer", "minimum": 0},
            "failed": {
                "type": "boolean",
                "description": "Completed as failed: more keys quarantined than max_failed_keys.",
            },
        },
    },
    "Process": {
        "type": "object",
        "required": ["process_name", "key_set_size", "key_space_size", "lease_seconds"],
        "properties": {
            "process_name": PROCESS_NAME,
            "key_set_size": {"type": "integer", "minimum": 1},
            "key_space_size": {"type": "integer", "minimum": 1, "description": "= key_set_size"},
            "lease_seconds": _LEASE,
            "mode": {**ref("Mode"), "default": "rotate"},
            "max_attempts": _MAX_ATTEMPTS,
            "retry_backoff_seconds": _BACKOFF,
            "max_failed_keys": _MAX_FAILED_KEYS,
            "pass": ref("Pass"),
        },
    },
    "BatchKey": {
        "type": "object",
        "required": [
            "external_id",
            "key",
            "last_completed_at",
            "machine",
            "process_name",
            "started_at",
            "expires_at",
            "fencing_token",
            "attempts",
            "state",
            "retry_at",
        ],
        "properties": {
            "external_id": {"type": ["string", "null"], "format": "uuid"},
            "key": {"type": "integer", "minimum": 0},
            "last_completed_at": _TIME,
            "machine": {"type": ["string", "null"]},
            "process_name": PROCESS_NAME,
            "started_at": _TIME,
            "expires_at": _TIME,
            "fencing_token": {"type": ["integer", "null"], "minimum": 1},
            "attempts": {"type": "integer", "minimum": 0},
            "state": {"enum": list(KEY_STATES)},
            "retry_at": _TIME,
            "checkpoint": {
                "type": ["string", "null"],
                "description": "Only in grants and a key's own resource, not in listings.",
            },
        },
    },
    "RegisterRequest": {
        "type": "object",
        "required": ["process_name"],
        "additionalProperties": False,
        "properties": {
            "process_name": _NEW_PROCESS_NAME,
            "key_set_size": {"type": ["integer", "null"], "minimum": 1, "default": 10},
            "lease_seconds": _OPTIONAL_LEASE,
            # One named enum for both, so generated clients share one type (not a second
            # enum named after this field).
            "mode": {"anyOf": [ref("Mode"), {"type": "null"}], "default": "rotate"},
            "max_attempts": _MAX_ATTEMPTS,
            "retry_backoff_seconds": {**_BACKOFF, "type": ["integer", "null"]},
            "max_failed_keys": _MAX_FAILED_KEYS,
        },
    },
    "GrantRequest": {
        "type": "object",
        "required": ["process_name", "machine"],
        "additionalProperties": False,
        "properties": {
            "process_name": PROCESS_NAME,
            "machine": {"type": "string", "minLength": 1, "maxLength": validation.MACHINE_MAX},
            "lease_seconds": _OPTIONAL_LEASE,
            "wait_seconds": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": validation.WAIT_SECONDS_MAX,
                "default": 0,
                "description": "When no key is free, wait up to this long for the first key"
                " released or expired (no polling) before answering 409 no_free_key.",
            },
            "request_id": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": validation.REQUEST_ID_MAX,
                "description": "While the lease granted for this id is live, the same request"
                " answers 200 with that lease instead of granting another; once that lease has"
                " ended (released, expired or revoked) it answers 410 lease_gone naming it, for"
                " at least the lease's length, and grants nothing.",
            },
        },
    },
    "RenewRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "lease_seconds": _OPTIONAL_LEASE,
            "checkpoint": {
                "type": ["string", "null"],
                "description": f"At most {validation.CHECKPOINT_BYTES_MAX} UTF-8 bytes, saved"
                " with the key for its next holder; null clears it.",
            },
        },
    },
    "StartPassRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "after": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": validation.PASS_NUMBER_MAX,
                "description": "The pass the caller expects to follow: a pass starts only if it"
                " is the current one (201); if it was already followed, 200 with the current"
                " pass and nothing started; above the current pass, 404 unknown_pass. Left out,"
                " the next pass starts whatever the current one is. Send it so a retried request"
                " starts one pass, not two.",
            },
        },
    },
    "RetryKeysRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "One of `keys` and `state`.",
        "properties": {
            "keys": {
                "type": "array",
                "minItems": 1,
                "maxItems": validation.RETRY_KEYS_MAX,
                "items": {"type": "integer", "minimum": 0, "maximum": validation.KEY_MAX},
                "description": "The keys to retry, each below the process's key_set_size (else"
                " 422 invalid_field naming it, and nothing changes).",
            },
            "state": {"enum": ["quarantined"], "description": "Every quarantined key."},
        },
        "oneOf": [{"required": ["keys"]}, {"required": ["state"]}],
    },
    "RetryKeysResult": {
        "type": "object",
        "required": ["retried", "quarantined", "backoff", "other"],
        "properties": {
            "retried": {"type": "integer", "minimum": 0, "description": "Keys retried."},
            "quarantined": {"type": "integer", "minimum": 0},
            "backoff": {"type": "integer", "minimum": 0},
            "other": {
                "type": "integer",
                "minimum": 0,
                "description": "Keys neither quarantined nor in backoff (free, held, done).",
            },
        },
    },
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string", "enum": sorted(PROBLEMS)},
        },
    },
    "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
    "TokenRights": {
        "type": "object",
        "required": ["role", "processes", "tokens_required"],
        "properties": {
            "role": {"type": "string", "enum": list(ROLES)},
            "processes": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "The process patterns the token covers; null: every process.",
            },
            "tokens_required": {"type": "boolean"},
        },
    },
    "Event": {
        "type": "object",
        "required": [
            "id",
            "type",
            "process_name",
            "key",
            "machine",
            "external_id",
            "fencing_token",
            "at",
        ],
        "properties": {
            "id": {"type": "string"},
            "type": {"enum": list(EVENT_TYPES)},
            "process_name": PROCESS_NAME,
            "key": {"type": ["integer", "null"]},
            "machine": {"type": ["string", "null"]},
            "external_id": {"type": ["string", "null"], "format": "uuid"},
            "fencing_token": {"type": ["integer", "null"]},
            "at": {"type": "string", "format": "date-time"},
        },
    },
}
