"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json: the document assembled
from its paths (openapi_*_paths) and component schemas (openapi_schemas, openapi_progress), with
the security and problems every route shares."""

from __future__ import annotations

from functools import cache
from typing import Any

from coordinator import __version__
from coordinator.browser_guard import STATE_CHANGING
from coordinator.metrics import PATH as METRICS_PATH
from coordinator.openapi_key_paths import key_paths
from coordinator.openapi_pass_paths import pass_paths
from coordinator.openapi_process_paths import process_paths
from coordinator.openapi_progress import PROGRESS_SCHEMAS
from coordinator.openapi_responses import problems
from coordinator.openapi_schemas import SCHEMAS
from coordinator.openapi_service_paths import service_paths

_HOLDER_ONLY = frozenset({"renewBatchKey", "releaseBatchKey"})


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
            added = problems(*codes)
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
        "paths": {**process_paths(), **key_paths(), **pass_paths(), **service_paths()},
        "components": {
            "schemas": {**SCHEMAS, **PROGRESS_SCHEMAS},
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
