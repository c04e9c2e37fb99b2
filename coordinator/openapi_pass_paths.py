"""The OpenAPI paths of a process's runs and their record: its passes, the current pass's
progress and the event history."""

from __future__ import annotations

from typing import Any

from coordinator import validation
from coordinator.openapi_params import NAME_PARAM
from coordinator.openapi_responses import BODY_PROBLEMS, body, ok, problems, ref


def pass_paths() -> dict[str, Any]:
    """The paths of passes, progress and history, built afresh (the document adds to them)."""
    return {
        "/api/v1/process/{process_name}/passes": {
            "post": {
                "summary": "Start the next pass now (admin)",
                "operationId": "startPass",
                "parameters": [NAME_PARAM],
                "requestBody": body("StartPassRequest", required=False),
                "responses": {
                    **ok(
                        201,
                        "The process in its new pass",
                        ref("Process"),
                        location="The pass: /api/v1/process/{process_name}/passes/{number}",
                    ),
                    **ok(
                        200,
                        "Pass `after` was already followed: the process in its current pass;"
                        " nothing started",
                        ref("Process"),
                        location="The pass: /api/v1/process/{process_name}/passes/{number}",
                    ),
                    **problems("unknown_process", "unknown_pass", *BODY_PROBLEMS),
                },
            },
        },
        "/api/v1/process/{process_name}/passes/{number}": {
            "get": {
                "summary": "A pass; the current one can be waited on until it completes",
                "operationId": "getPass",
                "parameters": [
                    NAME_PARAM,
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
                    **ok(200, "The pass", ref("Pass")),
                    **problems("unknown_process", "unknown_pass", "invalid_field"),
                },
            },
        },
        "/api/v1/process/{process_name}/progress": {
            "get": {
                "summary": "The current pass's progress: counts, rate, ETA, quarantined keys",
                "operationId": "getProgress",
                "description": "Counted as the key listing states each key. Costs O(log n)"
                " reads and a bounded list of quarantined keys.",
                "parameters": [NAME_PARAM],
                "responses": {
                    **ok(200, "The progress", ref("Progress")),
                    **problems("unknown_process", "invalid_field"),
                },
            },
        },
        "/api/v1/process/{process_name}/events": {
            "get": {
                "summary": "The process's history, oldest first (kept after a delete)",
                "operationId": "listEvents",
                "parameters": [
                    NAME_PARAM,
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
                    **ok(200, "The events", {"type": "array", "items": ref("Event")}),
                    **problems("unknown_process", "invalid_field"),
                },
            },
            "delete": {
                "summary": "Purge a deleted process's history now (admin)",
                "operationId": "purgeEvents",
                "description": "A deleted process's history expires by itself after"
                " COORDINATOR_DELETED_HISTORY_SECONDS (7 days unless set); this forgets it"
                " at once, and its leases then answer 404 instead of 410. A registered"
                " process's history is not purged (409).",
                "parameters": [NAME_PARAM],
                "responses": {
                    "204": {"description": "Purged"},
                    **problems("unknown_process", "process_exists", "invalid_field"),
                },
            },
        },
    }
