"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json."""

from __future__ import annotations

from functools import cache
from typing import Any

from coordinator import __version__, validation
from coordinator.auth import ROLES
from coordinator.browser_guard import STATE_CHANGING
from coordinator.errors import RETRY_AFTER_MAX_SECONDS
from coordinator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from coordinator.metrics import PATH as METRICS_PATH
from coordinator.models import EVENT_TYPES, KEY_STATES
from coordinator.openapi_progress import PROGRESS_SCHEMAS
from coordinator.problems import MEDIA_TYPE, PROBLEMS
from coordinator.route_words import ROUTE_WORDS

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(*codes: str) -> dict[str, Any]:
    """Responses for the given problem codes, grouped by status."""
    by_status: dict[int, list[str]] = {}
    for code in (*codes, "store_unavailable"):
        by_status.setdefault(PROBLEMS[code][0], []).append(code)
    responses: dict[str, Any] = {}
    for status, group in sorted(by_status.items()):
        response: dict[str, Any] = {
            "description": " or ".join(f"`{c}`" for c in group),
            "content": {MEDIA_TYPE: {"schema": _ref("Problem")}},
        }
        if "no_free_key" in group:
            response["headers"] = {"Retry-After": _NO_FREE_KEY_RETRY_AFTER}
        if "store_unavailable" in group:
            response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}
        if status == 405:
            response["headers"] = {"Allow": {"schema": {"type": "string"}}}
        responses[str(status)] = response
    return responses


_NO_FREE_KEY_RETRY_AFTER = {
    "description": "Seconds until the earliest lease of the process expires, but at most"
    f" {RETRY_AFTER_MAX_SECONDS}: a release may free a key any moment. To learn of a release at"
    " once, send `wait_seconds` instead of polling.",
    "schema": {"type": "integer", "minimum": 1, "maximum": RETRY_AFTER_MAX_SECONDS},
}


def _ok(
    status: int, description: str, schema: Schema, *, location: str | None = None
) -> dict[str, Any]:
    """A success response; `location` describes its Location header, if it has one."""
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if location is not None:
        response["headers"] = {"Location": {"description": location, "schema": {"type": "string"}}}
    return {str(status): response}


def _paged(response: dict[str, Any]) -> dict[str, Any]:
    """A listing's page response, with the Link header naming the next page."""
    ((status, body),) = response.items()
    link = {
        "description": 'While more remain: `<URL of the next page>; rel="next"`.',
        "schema": {"type": "string"},
    }
    return {status: {**body, "headers": {**body.get("headers", {}), "Link": link}}}


def _body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": _ref(schema)}}}


_BODY_PROBLEMS = ("malformed_json", "body_too_large", "unsupported_media_type", "invalid_field")
_PROCESS_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": validation.PROCESS_NAME_MAX,
    "pattern": validation.PROCESS_NAME_PATTERN,
}
# A name to register: not a word of the API's paths (validation.new_process_name).
_NEW_PROCESS_NAME = {
    **_PROCESS_NAME,
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
_NAME_PARAM = {"name": "process_name", "in": "path", "required": True, "schema": _PROCESS_NAME}
# A listing's page size (key and process listings share the bound).
_LIMIT_PARAM = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": validation.PAGE_MAX},
}
# OpenAPI holds /batch_keys/{a} and /batch_keys/{b} to be one path, so GET (a process name)
# and PATCH/DELETE (an external id) share the template variable `id`.
_KEYS_NAME_PARAM = {**_NAME_PARAM, "name": "id", "description": "The process name."}
_KEY_PARAM = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "The key number, 0 to key_set_size - 1.",
    "schema": {"type": "integer", "minimum": 0, "maximum": validation.KEY_MAX},
}
_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The external_id of the lease.",
    "schema": {"type": "string"},
}

_SCHEMAS: dict[str, Schema] = {
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
            "process_name": _PROCESS_NAME,
            "key_set_size": {"type": "integer", "minimum": 1},
            "key_space_size": {"type": "integer", "minimum": 1, "description": "= key_set_size"},
            "lease_seconds": _LEASE,
            "mode": {**_ref("Mode"), "default": "rotate"},
            "max_attempts": _MAX_ATTEMPTS,
            "retry_backoff_seconds": _BACKOFF,
            "max_failed_keys": _MAX_FAILED_KEYS,
            "pass": _ref("Pass"),
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
            "process_name": _PROCESS_NAME,
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
            "mode": {"anyOf": [_ref("Mode"), {"type": "null"}], "default": "rotate"},
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
            "process_name": _PROCESS_NAME,
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
            "process_name": _PROCESS_NAME,
            "key": {"type": ["integer", "null"]},
            "machine": {"type": ["string", "null"]},
            "external_id": {"type": ["string", "null"], "format": "uuid"},
            "fencing_token": {"type": ["integer", "null"]},
            "at": {"type": "string", "format": "date-time"},
        },
    },
}


_HOLDER_ONLY = frozenset({"renewBatchKey", "releaseBatchKey"})


def _dashboard(operation_id: str) -> dict[str, Any]:
    """The operators' page (coordinator/ui.py), served at / and /ui without a token."""
    return {
        "get": {
            "summary": "The operators' dashboard, one HTML page that asks for a token",
            "operationId": operation_id,
            "responses": {
                "200": {
                    "description": "The page",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
            },
        },
    }


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document (built once; it never changes while the service runs)."""
    doc = _document()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            # Every route answers 421 to a Host it does not serve, and every change 403 when a
            # browser sends it from another site (coordinator.browser_guard).
            codes = ["host_not_allowed"]
            if method.upper() in STATE_CHANGING:
                codes.append("cross_site_request")
            # Every /api route and /metrics take a Bearer token when tokens are configured;
            # health checks, this document and the dashboard page never do, which `[]` says
            # (no requirement at all, so linters and generators send no token). Renew and
            # release also answer 403 to a token not the lease's holder.
            if path.startswith("/api/") or path == METRICS_PATH:
                operation["security"] = [{}, {"bearer": []}]
                codes += ["unauthorized", "forbidden"]
                if operation["operationId"] in _HOLDER_ONLY:
                    codes.append("not_lease_holder")
            else:
                operation["security"] = []
            # One call, so codes sharing a status (403) share one response entry; the routes
            # outside /api answer no 503 (/metrics serves what it has while the store is down).
            added = _problems(*codes)
            if not path.startswith("/api/"):
                del added["503"]
            operation["responses"].update(added)
    return doc


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Batch Process Coordinator",
            "version": __version__,
            "description": "Hands out numbered batch keys to workers. Every error is an"
            " RFC 9457 problem document with a stable `code`.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        # Relative: the paths are under whatever origin served this document, so one document
        # is right behind every proxy and on every replica.
        "servers": [{"url": "/"}],
        "paths": {
            "/api/v1/process": {
                "get": {
                    "summary": "List registered processes, by name",
                    "operationId": "listProcesses",
                    "description": "Those whose names start with `prefix`. Without `limit`"
                    " every one, streamed as one array. With `limit`, a page of the names after"
                    ' `after`, and a `Link: <...>; rel="next"` header while names remain. A'
                    " token limited to some processes is shown only those.",
                    "parameters": [
                        _LIMIT_PARAM,
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "description": "The last name of the previous page.",
                            "schema": _PROCESS_NAME,
                        },
                        {
                            "name": "prefix",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "maxLength": validation.PROCESS_NAME_MAX,
                                # A name's start, or nothing: every name.
                                "pattern": f"^({validation.PROCESS_NAME_PATTERN[1:-1]})?$",
                                "default": "",
                            },
                        },
                    ],
                    "responses": {
                        **_paged(
                            _ok(200, "The processes", {"type": "array", "items": _ref("Process")})
                        ),
                        **_problems("invalid_field"),
                    },
                },
                "post": {
                    "summary": "Register a process and its key space",
                    "operationId": "registerProcess",
                    "requestBody": _body("RegisterRequest"),
                    "responses": {
                        **_ok(
                            201,
                            "Registered",
                            _ref("Process"),
                            location="The process: /api/v1/process/{process_name}",
                        ),
                        **_problems("process_exists", *_BODY_PROBLEMS),
                    },
                },
            },
            "/api/v1/process/{process_name}": {
                "get": {
                    "summary": "One registered process",
                    "operationId": "getProcess",
                    "parameters": [_NAME_PARAM],
                    "responses": {
                        **_ok(200, "The process", _ref("Process")),
                        **_problems("unknown_process", "invalid_field"),
                    },
                },
                "delete": {
                    "summary": "Unregister a process, ending all of its leases",
                    "operationId": "unregisterProcess",
                    "parameters": [_NAME_PARAM],
                    "responses": {
                        **_ok(200, "The process as it was", _ref("Process")),
                        **_problems("unknown_process", "invalid_field"),
                    },
                },
            },
            "/api/v1/process/batch_keys": {
                "post": {
                    "summary": "Request a key: the free key whose last completion is oldest",
                    "operationId": "grantBatchKey",
                    "requestBody": _body("GrantRequest"),
                    "responses": {
                        **_ok(
                            201,
                            "The key just granted",
                            _ref("BatchKey"),
                            location="The key: /api/v1/process/{process_name}/keys/{key}",
                        ),
                        **_ok(
                            200,
                            "The lease granted earlier to the same request_id, still live",
                            _ref("BatchKey"),
                            location="The key: /api/v1/process/{process_name}/keys/{key}",
                        ),
                        **_problems(
                            "unknown_process",
                            "no_free_key",
                            "pass_complete",
                            "pass_failed",
                            "all_quarantined",
                            "lease_gone",
                            *_BODY_PROBLEMS,
                        ),
                    },
                },
            },
            "/api/v1/process/batch_keys/{id}": {
                "get": {
                    "summary": "The state of every key of a process, by key",
                    "operationId": "listBatchKeys",
                    "description": "Without `limit` every key, streamed as one array. With"
                    " `limit`, a page of the keys after `after`, and a `Link: <...>;"
                    ' rel="next"` header while keys remain.',
                    "parameters": [
                        _KEYS_NAME_PARAM,
                        _LIMIT_PARAM,
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": -1,
                                "maximum": validation.KEY_AFTER_MAX,
                                "default": -1,
                            },
                        },
                    ],
                    "responses": {
                        **_paged(
                            _ok(200, "The keys", {"type": "array", "items": _ref("BatchKey")})
                        ),
                        **_problems("unknown_process", "invalid_field"),
                    },
                },
                "patch": {
                    "summary": "Renew a lease from now",
                    "operationId": "renewBatchKey",
                    "parameters": [_ID_PARAM],
                    "requestBody": _body("RenewRequest", required=False),
                    "responses": {
                        **_ok(200, "The lease with its new expiry", _ref("BatchKey")),
                        **_problems("unknown_lease", "lease_gone", *_BODY_PROBLEMS),
                    },
                },
                "delete": {
                    "summary": "Release a lease",
                    "operationId": "releaseBatchKey",
                    "parameters": [
                        _ID_PARAM,
                        {
                            "name": "outcome",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": list(validation.OUTCOMES), "default": "completed"},
                        },
                    ],
                    "responses": {
                        **_ok(200, "The key as it stood at release", _ref("BatchKey")),
                        **_problems("unknown_lease", "lease_gone", "invalid_field"),
                    },
                },
            },
            "/api/v1/process/{process_name}/keys/{key}": {
                "get": {
                    "summary": "One key of a process",
                    "operationId": "getBatchKey",
                    "parameters": [_NAME_PARAM, _KEY_PARAM],
                    "responses": {
                        **_ok(200, "The key", _ref("BatchKey")),
                        **_problems("unknown_process", "unknown_key", "invalid_field"),
                    },
                },
            },
            "/api/v1/process/{process_name}/keys/{key}/retry": {
                "post": {
                    "summary": "Lift a key's quarantine and backoff, reset its attempts (admin)",
                    "operationId": "retryBatchKey",
                    "parameters": [_NAME_PARAM, _KEY_PARAM],
                    "responses": {
                        **_ok(200, "The key", _ref("BatchKey")),
                        **_problems("unknown_process", "unknown_key", "invalid_field"),
                    },
                },
            },
            "/api/v1/process/{process_name}/keys/retry": {
                "post": {
                    "summary": "Retry the listed keys, or every quarantined key (admin)",
                    "description": "As the one-key retry, for each key: quarantine and backoff"
                    " lifted, attempts reset, a completed `once` pass reopened (and no longer"
                    f" failed), one `retried` event per key. Done {validation.RETRY_CHUNK} keys"
                    " per Redis call, so no call runs long at any size; a list is checked whole"
                    " before any key changes.",
                    "operationId": "retryBatchKeys",
                    "parameters": [_NAME_PARAM],
                    "requestBody": _body("RetryKeysRequest"),
                    "responses": {
                        **_ok(200, "Keys retried, by state before", _ref("RetryKeysResult")),
                        **_problems("unknown_process", *_BODY_PROBLEMS),
                    },
                },
            },
            "/api/v1/process/{process_name}/passes": {
                "post": {
                    "summary": "Start the next pass now (admin)",
                    "operationId": "startPass",
                    "parameters": [_NAME_PARAM],
                    "requestBody": _body("StartPassRequest", required=False),
                    "responses": {
                        **_ok(
                            201,
                            "The process in its new pass",
                            _ref("Process"),
                            location="The pass: /api/v1/process/{process_name}/passes/{number}",
                        ),
                        **_ok(
                            200,
                            "Pass `after` was already followed: the process in its current pass;"
                            " nothing started",
                            _ref("Process"),
                            location="The pass: /api/v1/process/{process_name}/passes/{number}",
                        ),
                        **_problems("unknown_process", "unknown_pass", *_BODY_PROBLEMS),
                    },
                },
            },
            "/api/v1/process/{process_name}/passes/{number}": {
                "get": {
                    "summary": "A pass; the current one can be waited on until it completes",
                    "operationId": "getPass",
                    "parameters": [
                        _NAME_PARAM,
                        {
                            "name": "number",
                            "in": "path",
                            "required": True,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": validation.PASS_NUMBER_MAX,
                            },
                        },
                        {
                            "name": "wait_seconds",
                            "in": "query",
                            "required": False,
                            "description": "For the current pass, wait up to this many whole"
                            " seconds for it to complete.",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": validation.WAIT_SECONDS_MAX,
                                "default": 0,
                            },
                        },
                    ],
                    "responses": {
                        **_ok(200, "The pass", _ref("Pass")),
                        **_problems("unknown_process", "unknown_pass", "invalid_field"),
                    },
                },
            },
            "/api/v1/process/{process_name}/progress": {
                "get": {
                    "summary": "The current pass's progress: counts, rate, ETA, quarantined keys",
                    "operationId": "getProgress",
                    "description": "Counted as the key listing states each key. Costs O(log n)"
                    " reads and a bounded list of quarantined keys.",
                    "parameters": [_NAME_PARAM],
                    "responses": {
                        **_ok(200, "The progress", _ref("Progress")),
                        **_problems("unknown_process", "invalid_field"),
                    },
                },
            },
            "/api/v1/process/batch_keys/{id}/revoke": {
                "post": {
                    "summary": "End a lease now, as an administrator (no completion stamped)",
                    "operationId": "revokeBatchKey",
                    "parameters": [_ID_PARAM],
                    "responses": {
                        **_ok(200, "The key as it stood when revoked", _ref("BatchKey")),
                        **_problems("unknown_lease", "lease_gone"),
                    },
                },
            },
            "/api/v1/process/{process_name}/events": {
                "get": {
                    "summary": "The process's history, oldest first (kept after a delete)",
                    "operationId": "listEvents",
                    "parameters": [
                        _NAME_PARAM,
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "description": "Only events after this event id: `-` (from the"
                            " first) or `<milliseconds>-<sequence>`, each part an integer from 0"
                            f" to {validation.EVENT_ID_PART_MAX}.",
                            "schema": {
                                "type": "string",
                                "pattern": validation.EVENT_ID_PATTERN,
                                "default": "-",
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": validation.PAGE_MAX,
                                "default": validation.EVENTS_PAGE_DEFAULT,
                            },
                        },
                    ],
                    "responses": {
                        **_ok(200, "The events", {"type": "array", "items": _ref("Event")}),
                        **_problems("unknown_process", "invalid_field"),
                    },
                },
                "delete": {
                    "summary": "Purge a deleted process's history now (admin)",
                    "operationId": "purgeEvents",
                    "description": "A deleted process's history expires by itself after"
                    " COORDINATOR_DELETED_HISTORY_SECONDS (7 days unless set); this forgets it"
                    " at once, and its leases then answer 404 instead of 410. A registered"
                    " process's history is not purged (409).",
                    "parameters": [_NAME_PARAM],
                    "responses": {
                        "204": {"description": "Purged"},
                        **_problems("unknown_process", "process_exists", "invalid_field"),
                    },
                },
            },
            "/api/v1/token": {
                "get": {
                    "summary": "What the caller's token may do",
                    "description": "Its role and process patterns (null: every process); with"
                    " no tokens configured, admin of every process. The dashboard hides what"
                    " the token may not do; the API still decides each request.",
                    "operationId": "tokenRights",
                    "responses": _ok(200, "The token's rights", _ref("TokenRights")),
                },
            },
            "/healthz": {
                "get": {
                    "summary": "The process runs",
                    "operationId": "healthz",
                    "responses": _ok(200, "Alive", _ref("Status")),
                },
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": _ok(200, "OpenAPI 3.1", {"type": "object"}),
                },
            },
            "/readyz": {
                "get": {
                    "summary": "A script round trip to Redis succeeds",
                    "operationId": "readyz",
                    "responses": {**_ok(200, "Ready", _ref("Status")), **_problems()},
                },
            },
            METRICS_PATH: {
                "get": {
                    "summary": "Prometheus metrics: requests, operations, per-process figures",
                    "operationId": "metrics",
                    "description": "With tokens configured, any valid token (a scoped one sees"
                    " only its processes' figures); without, loopback clients only (else 403).",
                    "responses": {
                        "200": {
                            "description": "The Prometheus text exposition format",
                            "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
                        },
                    },
                },
            },
            "/ui": _dashboard("dashboard"),
            "/": _dashboard("dashboardRoot"),
        },
        "components": {
            "schemas": {**_SCHEMAS, **PROGRESS_SCHEMAS},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (`coordinator token create`). Required only"
                    " when the service has tokens configured; `admin` tokens may register and"
                    " delete, `worker` tokens may list, request, renew and release.",
                }
            },
        },
    }
