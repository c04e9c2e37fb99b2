"""The path and query parameters the OpenAPI routes share, and the process-name schema they
and the request bodies state (its bounds from coordinator.validation)."""

from __future__ import annotations

from coordinator import validation

PROCESS_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": validation.PROCESS_NAME_MAX,
    "pattern": validation.PROCESS_NAME_PATTERN,
}
NAME_PARAM = {"name": "process_name", "in": "path", "required": True, "schema": PROCESS_NAME}
# A listing's page size (key and process listings share the bound).
LIMIT_PARAM = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": validation.PAGE_MAX},
}
# OpenAPI holds /batch_keys/{a} and /batch_keys/{b} to be one path, so GET (a process name)
# and PATCH/DELETE (an external id) share the template variable `id`.
KEYS_NAME_PARAM = {**NAME_PARAM, "name": "id", "description": "The process name."}
KEY_PARAM = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "The key number, 0 to key_set_size - 1.",
    "schema": {"type": "integer", "minimum": 0, "maximum": validation.KEY_MAX},
}
ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The external_id of the lease.",
    "schema": {"type": "string"},
}
