"""The OpenAPI paths of the service itself: the caller's token rights, health and readiness,
this document, metrics and the operators' dashboard."""

from __future__ import annotations

from typing import Any

from coordinator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from coordinator.metrics import PATH as METRICS_PATH
from coordinator.openapi_responses import ok, problems, ref


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


def service_paths() -> dict[str, Any]:
    """The service's own paths, built afresh (the document adds to them)."""
    return {
        "/api/v1/token": {
            "get": {
                "summary": "What the caller's token may do",
                "description": "Its role and process patterns (null: every process); with"
                " no tokens configured, admin of every process. The dashboard hides what"
                " the token may not do; the API still decides each request.",
                "operationId": "tokenRights",
                "responses": ok(200, "The token's rights", ref("TokenRights")),
            },
        },
        "/healthz": {
            "get": {
                "summary": "The process runs",
                "operationId": "healthz",
                "responses": ok(200, "Alive", ref("Status")),
            },
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": ok(200, "OpenAPI 3.1", {"type": "object"}),
            },
        },
        "/readyz": {
            "get": {
                "summary": "A script round trip to Redis succeeds",
                "operationId": "readyz",
                "responses": {**ok(200, "Ready", ref("Status")), **problems()},
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
    }
