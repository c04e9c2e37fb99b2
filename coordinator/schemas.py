"""Request bodies in, JSON out: size and syntax checks, field checks, serialisation."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from coordinator import validation
from coordinator.errors import InvalidField
from coordinator.problems import (
    BodyTooLarge,
    ClientClosedRequest,
    MalformedJson,
    UnsupportedMediaType,
)
from coordinator.validation import UNSET, Unset

MAX_BODY_BYTES = 64 * 1024
# An integer in a query: ASCII digits only (str.isdigit also takes "²" and "٣"), and at most 20 of
# them (more is past every bound here, and int() refuses strings past 4300 digits).
_QUERY_INT = re.compile(r"-?[0-9]{1,20}")


class JSONResponse(Response):
    """orjson-encoded `application/json`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:  # noqa: ANN401 - any JSON value
        """Encode `content` with orjson."""
        return orjson.dumps(content)


@dataclass(frozen=True, slots=True)
class RegisterBody:
    """POST /api/v1/process."""

    process_name: str
    key_set_size: int | None
    lease_seconds: int | None
    mode: str | None = None
    max_attempts: int | None = None
    retry_backoff_seconds: int | None = None
    # Checked again by the store against the size the process gets (its default included).
    max_failed_keys: int | None = None


@dataclass(frozen=True, slots=True)
class GrantBody:
    """POST /api/v1/process/batch_keys."""

    process_name: str
    machine: str
    lease_seconds: int | None
    wait_seconds: float
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RenewBody:
    """PATCH /api/v1/process/batch_keys/<external_id>."""

    lease_seconds: int | None
    # Left out: the checkpoint stays; null: it is cleared.
    checkpoint: str | Unset | None = UNSET


@dataclass(frozen=True, slots=True)
class KeyPage:
    """?limit=N&after=K on a key listing: keys after K, at most N; no limit is every key."""

    first: int
    limit: int | None


def key_page(query: Mapping[str, str]) -> KeyPage:
    """Parse and check the paging parameters of a key listing."""
    limit = query.get("limit")
    after = query.get("after")
    return KeyPage(
        first=0 if after is None else _query_int(after, "after", -1, validation.KEY_AFTER_MAX) + 1,
        limit=None if limit is None else _query_int(limit, "limit", 1, validation.PAGE_MAX),
    )


@dataclass(frozen=True, slots=True)
class ProcessPage:
    """?limit=N&after=NAME&prefix=P on the process list: names starting with P after NAME, at
    most N; no limit is every one."""

    prefix: str
    after: str | None
    limit: int | None


def process_page(query: Mapping[str, str]) -> ProcessPage:
    """Parse and check the paging parameters of the process list (a prefix of a name is a
    name, so both are checked as one)."""
    prefix = query.get("prefix", "")
    after = query.get("after")
    limit = query.get("limit")
    return ProcessPage(
        prefix=prefix and validation.process_name(prefix, "prefix"),
        after=None if after is None else validation.process_name(after, "after"),
        limit=None if limit is None else _query_int(limit, "limit", 1, validation.PAGE_MAX),
    )


def event_page(query: Mapping[str, str]) -> tuple[str, int]:
    """?after=<event id>&limit=N on an event listing (limit 1 to 10,000, default 100)."""
    after = validation.event_id(query.get("after", "-"))
    limit = query.get("limit")
    if limit is None:
        return after, validation.EVENTS_PAGE_DEFAULT
    return after, _query_int(limit, "limit", 1, validation.PAGE_MAX)


class Jsonable(Protocol):
    """A record the API answers with."""

    def to_json(self) -> dict[str, Any]:
        """Its JSON object."""
        ...


async def json_chunks(
    head: Sequence[Jsonable], rest: AsyncIterator[Sequence[Jsonable]]
) -> AsyncIterator[bytes]:
    """A JSON array produced a chunk at a time as the chunks are read: one orjson call each."""
    yield b"[" + orjson.dumps([item.to_json() for item in head])[1:-1]
    async for chunk in rest:
        if chunk:
            yield b"," + orjson.dumps([item.to_json() for item in chunk])[1:-1]
    yield b"]"


async def json_value_chunks(
    head: Sequence[Any], rest: AsyncIterator[Sequence[Any]]
) -> AsyncIterator[bytes]:
    """`json_chunks` of chunks that are JSON values already (a key listing's objects)."""
    yield b"[" + orjson.dumps(head)[1:-1]
    async for chunk in rest:
        if chunk:
            yield b"," + orjson.dumps(chunk)[1:-1]
    yield b"]"


def key_number(raw: str) -> int:
    """A key number in a path; one outside the process's keys is the store's unknown_key."""
    if not _QUERY_INT.fullmatch(raw):
        raise InvalidField("key", "must be an integer: a key number from 0 to key_set_size - 1")
    return int(raw)


def pass_query(raw: str, query: Mapping[str, str]) -> tuple[int, float]:
    """A pass number in a path, and ?wait_seconds=0…60 (whole seconds to wait for it)."""
    number = _query_int(raw, "number", 1, validation.PASS_NUMBER_MAX)
    wait = query.get("wait_seconds")
    seconds = (
        0 if wait is None else _query_int(wait, "wait_seconds", 0, validation.WAIT_SECONDS_MAX)
    )
    return number, float(seconds)


def _query_int(raw: str, field: str, low: int, high: int) -> int:
    """A query parameter's integer from `low` to `high` (the bounds /openapi.json states)."""
    if not _QUERY_INT.fullmatch(raw) or not low <= int(raw) <= high:
        raise InvalidField(field, f"must be an integer from {low} to {high}")
    return int(raw)


async def register_body(request: Request, max_key_set_size: int) -> RegisterBody:
    """Parse and check a registration."""
    body = await _object(
        request,
        {
            "process_name",
            "key_set_size",
            "lease_seconds",
            "mode",
            "max_attempts",
            "retry_backoff_seconds",
            "max_failed_keys",
        },
    )
    size = body.get("key_set_size")
    lease = body.get("lease_seconds")
    mode = body.get("mode")
    backoff = body.get("retry_backoff_seconds")
    return RegisterBody(
        process_name=validation.new_process_name(_required(body, "process_name")),
        key_set_size=None if size is None else validation.key_set_size(size, max_key_set_size),
        lease_seconds=None if lease is None else validation.lease_seconds(lease),
        mode=None if mode is None else validation.mode(mode),
        max_attempts=validation.max_attempts(body.get("max_attempts")),
        retry_backoff_seconds=None
        if backoff is None
        else validation.retry_backoff_seconds(backoff),
        max_failed_keys=validation.max_failed_keys(
            body.get("max_failed_keys"), max_key_set_size, "rotate" if mode is None else mode
        ),
    )


async def grant_body(request: Request) -> GrantBody:
    """Parse and check a key request."""
    body = await _object(
        request, {"process_name", "machine", "lease_seconds", "wait_seconds", "request_id"}
    )
    lease = body.get("lease_seconds")
    wait = body.get("wait_seconds")
    return GrantBody(
        process_name=validation.process_name(_required(body, "process_name")),
        machine=validation.machine(_required(body, "machine")),
        lease_seconds=None if lease is None else validation.lease_seconds(lease),
        wait_seconds=0 if wait is None else validation.wait_seconds(wait),
        request_id=validation.request_id(body.get("request_id")),
    )


async def renew_body(request: Request) -> RenewBody:
    """Parse and check a renewal; an empty body keeps the lease's own length."""
    body = await _object(request, {"lease_seconds", "checkpoint"}, allow_empty=True)
    lease = body.get("lease_seconds")
    return RenewBody(
        lease_seconds=None if lease is None else validation.lease_seconds(lease),
        checkpoint=validation.checkpoint(body["checkpoint"]) if "checkpoint" in body else UNSET,
    )


async def start_pass_body(request: Request) -> int | None:
    """POST .../passes: an optional `{"after": N}`, the pass the caller expects to follow."""
    body = await _object(request, {"after"}, allow_empty=True)
    after = body.get("after")
    return None if after is None else validation.pass_number(after, "after")


async def retry_body(request: Request) -> list[int] | None:
    """POST .../keys/retry: `{"keys": [3, 17]}` (those keys) or `{"state": "quarantined"}`
    (every quarantined key: None)."""
    body = await _object(request, {"keys", "state"})
    if ("keys" in body) == ("state" in body):
        raise InvalidField("keys", "or 'state' must be given (one, not both)")
    if "state" in body:
        if body["state"] != "quarantined":
            raise InvalidField("state", "must be 'quarantined'")
        return None
    return validation.key_list(body["keys"])


def _required(body: dict[str, Any], field: str) -> object:
    if body.get(field) is None:
        raise InvalidField(field, "is required")
    return body[field]


async def _object(
    request: Request, fields: set[str], *, allow_empty: bool = False
) -> dict[str, Any]:
    """The body as a JSON object with no fields but `fields`."""
    raw = await _read(request)
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    # A body must say it is JSON: one with no type, or a form's or text's, is what a page on
    # another site can send without a preflight (fetch no-cors), so it is never parsed.
    is_json = media == "application/json" or media.endswith("+json")
    if not is_json and (raw or (media and not allow_empty)):
        sent = f"not {media}" if media else "with a Content-Type header"
        raise UnsupportedMediaType(f"Send the body as application/json, {sent}.")
    if not raw.strip() and allow_empty:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MalformedJson(f"The body is not valid JSON: {error}.") from None
    if not isinstance(body, dict):
        raise MalformedJson("The body must be a JSON object.")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise InvalidField(
            unknown[0], f"is not a field of this request ({', '.join(sorted(fields))})"
        )
    return body


async def _read(request: Request) -> bytes:
    """The body, refused as soon as it passes MAX_BODY_BYTES (declared or streamed); a client
    that hangs up before its end is ClientClosedRequest (a 499 logged, nothing answered)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"The body may be at most {MAX_BODY_BYTES} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BodyTooLarge(f"The body may be at most {MAX_BODY_BYTES} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientClosedRequest("The client closed the connection mid-body.") from None
    return b"".join(chunks)
