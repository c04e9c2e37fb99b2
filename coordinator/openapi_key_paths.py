"""The OpenAPI paths of keys and their leases: grant, list, read, renew, release, revoke and
retry."""

from __future__ import annotations

from typing import Any

from coordinator import validation
from coordinator.openapi_params import ID_PARAM, KEY_PARAM, KEYS_NAME_PARAM, LIMIT_PARAM, NAME_PARAM
from coordinator.openapi_responses import BODY_PROBLEMS, body, ok, paged, problems, ref


def key_paths() -> dict[str, Any]:
    """The paths of keys and leases, built afresh (the document adds to them)."""
    return {
        "/api/v1/process/batch_keys": {
            "post": {
                "summary": "Request a key: the free key whose last completion is oldest",
                "operationId": "grantBatchKey",
                "requestBody": body("GrantRequest"),
                "responses": {
                    **ok(
                        201,
                        "The key just granted",
                        ref("BatchKey"),
                        location="The key: /api/v1/process/{process_name}/keys/{key}",
                    ),
                    **ok(
                        200,
                        "The lease granted earlier to the same request_id, still live",
                        ref("BatchKey"),
                        location="The key: /api/v1/process/{process_name}/keys/{key}",
                    ),
                    **problems(
                        "unknown_process",
                        "no_free_key",
                        "pass_complete",
                        "pass_failed",
                        "all_quarantined",
                        "lease_gone",
                        *BODY_PROBLEMS,
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
                    KEYS_NAME_PARAM,
                    LIMIT_PARAM,
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
                    **paged(ok(200, "The keys", {"type": "array", "items": ref("BatchKey")})),
                    **problems("unknown_process", "invalid_field"),
                },
            },
            "patch": {
                "summary": "Renew a lease from now",
                "operationId": "renewBatchKey",
                "parameters": [ID_PARAM],
                "requestBody": body("RenewRequest", required=False),
                "responses": {
                    **ok(200, "The lease with its new expiry", ref("BatchKey")),
                    **problems("unknown_lease", "lease_gone", *BODY_PROBLEMS),
                },
            },
            "delete": {
                "summary": "Release a lease",
                "operationId": "releaseBatchKey",
                "parameters": [
                    ID_PARAM,
                    {
                        "name": "outcome",
                        "in": "query",
                        "required": False,
                        "schema": {"enum": list(validation.OUTCOMES), "default": "completed"},
                    },
                ],
                "responses": {
                    **ok(200, "The key as it stood at release", ref("BatchKey")),
                    **problems("unknown_lease", "lease_gone", "invalid_field"),
                },
            },
        },
        "/api/v1/process/{process_name}/keys/{key}": {
            "get": {
                "summary": "One key of a process",
                "operationId": "getBatchKey",
                "parameters": [NAME_PARAM, KEY_PARAM],
                "responses": {
                    **ok(200, "The key", ref("BatchKey")),
                    **problems("unknown_process", "unknown_key", "invalid_field"),
                },
            },
        },
        "/api/v1/process/{process_name}/keys/{key}/retry": {
            "post": {
                "summary": "Lift a key's quarantine and backoff, reset its attempts (admin)",
                "operationId": "retryBatchKey",
                "parameters": [NAME_PARAM, KEY_PARAM],
                "responses": {
                    **ok(200, "The key", ref("BatchKey")),
                    **problems("unknown_process", "unknown_key", "invalid_field"),
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
                "parameters": [NAME_PARAM],
                "requestBody": body("RetryKeysRequest"),
                "responses": {
                    **ok(200, "Keys retried, by state before", ref("RetryKeysResult")),
                    **problems("unknown_process", *BODY_PROBLEMS),
                },
            },
        },
        "/api/v1/process/batch_keys/{id}/revoke": {
            "post": {
                "summary": "End a lease now, as an administrator (no completion stamped)",
                "operationId": "revokeBatchKey",
                "parameters": [ID_PARAM],
                "responses": {
                    **ok(200, "The key as it stood when revoked", ref("BatchKey")),
                    **problems("unknown_lease", "lease_gone"),
                },
            },
        },
    }
