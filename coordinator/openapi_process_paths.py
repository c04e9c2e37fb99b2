"""The OpenAPI paths of the process registry: list, register, read and unregister processes."""

from __future__ import annotations

from typing import Any

from coordinator import validation
from coordinator.openapi_params import LIMIT_PARAM, NAME_PARAM, PROCESS_NAME
from coordinator.openapi_responses import BODY_PROBLEMS, body, ok, paged, problems, ref


def process_paths() -> dict[str, Any]:
    """The process registry's paths, built afresh (the document adds to them)."""
    return {
        "/api/v1/process": {
            "get": {
                "summary": "List registered processes, by name",
                "operationId": "listProcesses",
                "description": "Those whose names start with `prefix`. Without `limit`"
                " every one, streamed as one array. With `limit`, a page of the names after"
                ' `after`, and a `Link: <...>; rel="next"` header while names remain. A'
                " token limited to some processes is shown only those.",
                "parameters": [
                    LIMIT_PARAM,
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "The last name of the previous page.",
                        "schema": PROCESS_NAME,
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
                    **paged(ok(200, "The processes", {"type": "array", "items": ref("Process")})),
                    **problems("invalid_field"),
                },
            },
            "post": {
                "summary": "Register a process and its key space",
                "operationId": "registerProcess",
                "requestBody": body("RegisterRequest"),
                "responses": {
                    **ok(
                        201,
                        "Registered",
                        ref("Process"),
                        location="The process: /api/v1/process/{process_name}",
                    ),
                    **problems("process_exists", *BODY_PROBLEMS),
                },
            },
        },
        "/api/v1/process/{process_name}": {
            "get": {
                "summary": "One registered process",
                "operationId": "getProcess",
                "parameters": [NAME_PARAM],
                "responses": {
                    **ok(200, "The process", ref("Process")),
                    **problems("unknown_process", "invalid_field"),
                },
            },
            "delete": {
                "summary": "Unregister a process, ending all of its leases",
                "operationId": "unregisterProcess",
                "parameters": [NAME_PARAM],
                "responses": {
                    **ok(200, "The process as it was", ref("Process")),
                    **problems("unknown_process", "invalid_field"),
                },
            },
        },
    }
