"""The one place failures become RFC 9457 problem responses."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from coordinator import errors

logger = logging.getLogger("coordinator")

MEDIA_TYPE = "application/problem+json"
# The status logged for a request whose client left before its answer (nginx's convention);
# never seen by a client, so it is no problem code and not in /openapi.json.
CLIENT_CLOSED_REQUEST = 499


class MalformedJson(errors.CoordinatorError):
    """The body is not valid JSON, or not a JSON object."""

    code = "malformed_json"


class BodyTooLarge(errors.CoordinatorError):
    """The body is larger than the service accepts."""

    code = "body_too_large"


class UnsupportedMediaType(errors.CoordinatorError):
    """The body is declared as something other than JSON."""

    code = "unsupported_media_type"


class ClientClosedRequest(errors.CoordinatorError):
    """The client hung up before it had sent the whole body: nobody is left to answer."""

    code = "client_closed_request"


# code -> (status, title); the title is the same for every occurrence of a code.
PROBLEMS: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "Malformed JSON body"),
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "cross_site_request": (403, "Cross-site request refused"),
    "not_lease_holder": (403, "Not the lease holder"),
    "unknown_process": (404, "Unknown process"),
    "unknown_lease": (404, "Unknown lease"),
    "unknown_pass": (404, "Unknown pass"),
    "unknown_key": (404, "Unknown key"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "request_timeout": (408, "Request timeout"),
    "process_exists": (409, "Process already registered"),
    "no_free_key": (409, "No free key"),
    "pass_complete": (409, "Pass complete"),
    "pass_failed": (409, "Pass failed"),
    "all_quarantined": (409, "All keys quarantined"),
    "lease_gone": (410, "Lease has ended"),
    "body_too_large": (413, "Request body too large"),
    "host_not_allowed": (421, "Host not allowed"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "invalid_field": (422, "Invalid field"),
    "request_head_too_large": (431, "Request header fields too large"),
    "internal_error": (500, "Internal server error"),
    "store_unavailable": (503, "Store unavailable"),
    # Answered by the connection itself (coordinator/http_limits.py), before any route.
    "too_many_connections": (503, "Too many connections"),
}


# Where an answered problem's code is left in the ASGI scope, for the middleware outside.
PROBLEM_SCOPE_KEY = "coordinator.problem"


def problem(code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """A problem+json response for one of the codes in PROBLEMS."""
    status, title = PROBLEMS[code]
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    return Response(orjson.dumps(body), status, headers=headers, media_type=MEDIA_TYPE)


async def coordinator_error(request: Request, exc: Exception) -> Response:
    """Every CoordinatorError, by its code; unknown codes are the service's own fault."""
    assert isinstance(exc, errors.CoordinatorError)
    if isinstance(exc, ClientClosedRequest):
        # Not a failure of the service: one access line with 499, no traceback, no 500 counted.
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    headers: dict[str, str] = {}
    if isinstance(exc, errors.NoFreeKey):
        headers["Retry-After"] = str(exc.retry_after_seconds)
    elif exc.code == "unauthorized":
        headers["WWW-Authenticate"] = 'Bearer realm="batch-process-coordinator"'
    elif isinstance(exc, errors.StoreUnavailable):
        headers["Retry-After"] = "1"
        logger.warning("store unavailable: %s", exc)
    if exc.code not in PROBLEMS:
        logger.error("unmapped error on %s %s: %r", request.method, request.url.path, exc)
        return problem("internal_error", "The service failed to handle this request.")
    # The metrics middleware, further out, tells one 409 of a grant from another by it.
    request.scope[PROBLEM_SCOPE_KEY] = exc.code
    return problem(exc.code, str(exc), headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Routing failures raised by Starlette: unknown route, wrong method."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allow = ", ".join(_allowed_methods(request))
        return problem(
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}; allowed: {allow}.",
            {"Allow": allow},
        )
    if exc.status_code == 404:
        return problem("not_found", f"No route {request.url.path}.")
    phrase = HTTPStatus(exc.status_code).phrase
    body = {"type": "about:blank", "title": phrase, "status": exc.status_code, "detail": exc.detail}
    return Response(orjson.dumps(body), exc.status_code, media_type=MEDIA_TYPE)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "OPTIONS"})
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: log it whole, answer a problem without internals."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem("internal_error", "The service failed to handle this request.")
