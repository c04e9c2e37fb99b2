"""The pieces every OpenAPI operation is built of: schema references, request bodies, success
responses and the problem responses of given codes, grouped by status."""

from __future__ import annotations

from typing import Any

from coordinator.errors import RETRY_AFTER_MAX_SECONDS
from coordinator.problems import MEDIA_TYPE, PROBLEMS

JSON = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def problems(*codes: str) -> dict[str, Any]:
    """Responses for the given problem codes, grouped by status."""
    by_status: dict[int, list[str]] = {}
    for code in (*codes, "store_unavailable"):
        by_status.setdefault(PROBLEMS[code][0], []).append(code)
    responses: dict[str, Any] = {}
    for status, group in sorted(by_status.items()):
        response: dict[str, Any] = {
            "description": " or ".join(f"`{c}`" for c in group),
            "content": {MEDIA_TYPE: {"schema": ref("Problem")}},
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


def ok(
    status: int, description: str, schema: Schema, *, location: str | None = None
) -> dict[str, Any]:
    """A success response; `location` describes its Location header, if it has one."""
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if location is not None:
        response["headers"] = {"Location": {"description": location, "schema": {"type": "string"}}}
    return {str(status): response}


def paged(response: dict[str, Any]) -> dict[str, Any]:
    """A listing's page response, with the Link header naming the next page."""
    ((status, body),) = response.items()
    link = {
        "description": 'While more remain: `<URL of the next page>; rel="next"`.',
        "schema": {"type": "string"},
    }
    return {status: {**body, "headers": {**body.get("headers", {}), "Link": link}}}


def body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": ref(schema)}}}


BODY_PROBLEMS = ("malformed_json", "body_too_large", "unsupported_media_type", "invalid_field")
