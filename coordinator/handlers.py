"""HTTP handlers: each parses and validates its request, calls one store method, and
serialises the answer. Which URL reaches which handler is `coordinator.app`'s ROUTES."""

from __future__ import annotations

import logging
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from coordinator import disconnect, logs, openapi, problems, schemas, validation
from coordinator.auth import Principal, TokenTable
from coordinator.errors import CoordinatorError, StoreUnavailable, UnknownLease
from coordinator.eviction import EvictionGuard
from coordinator.models import BatchKey
from coordinator.progress_read import read_progress
from coordinator.schemas import JSONResponse
from coordinator.store import Store

API = "/api/v1"
logger = logging.getLogger("coordinator")
# The status logged for a request whose client left before its answer (declared in problems).
CLIENT_CLOSED_REQUEST = problems.CLIENT_CLOSED_REQUEST


def _store(request: Request) -> Store:
    store: Store = request.state.store
    return store


def _caller(request: Request) -> Principal | None:
    """Who is calling (401 without a valid token), or None when the API is open."""
    tokens: TokenTable = request.state.tokens
    return tokens.authenticate(request.headers.get("authorization")) if tokens else None


def _require(caller: Principal | None, role: str, process_name: str | None = None) -> None:
    if caller is not None:
        caller.require(role, process_name)


async def _require_lease(request: Request, caller: Principal | None, external_id: str) -> None:
    """A process-limited token may touch only leases of its processes. Any other id answers
    as an id never issued does (404 unknown_lease, naming only the id), whether its process
    exists or not: the token learns no name, and nothing about which exist."""
    if caller is not None and caller.processes is not None:
        name = await _store(request).process_name_of(external_id)  # UnknownLease if none
        if not caller.may_act_on(name):
            raise UnknownLease(external_id)


def _holder(caller: Principal | None) -> str:
    """Who a grant is recorded for, and who a renew or release must be: no one when open."""
    return "" if caller is None else caller.holder


async def list_processes(request: Request) -> Response:
    """GET /api/v1/process[?limit=N&after=NAME&prefix=P]."""
    caller = _caller(request)
    page = schemas.process_page(request.query_params)
    # One name past the page tells whether another page follows, in the same reads.
    limit = None if page.limit is None else page.limit + 1
    # A scoped token's listing reads only the names its patterns can match.
    chunks = _store(request).process_chunks(page.prefix, page.after, limit, caller)
    # The first chunk is read before answering, so a failing store is still a problem answer.
    try:
        head = await anext(chunks)
    except StopAsyncIteration:
        return JSONResponse([])
    if page.limit is None:
        return StreamingResponse(schemas.json_chunks(head, chunks), media_type="application/json")
    rows = [*head, *[p async for chunk in chunks for p in chunk]]
    headers = {}
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        query = {"limit": page.limit, "after": rows[-1].process_name}
        query |= {"prefix": page.prefix} if page.prefix else {}
        headers["Link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
    return JSONResponse([p.to_json() for p in rows], headers=headers)


async def register_process(request: Request) -> Response:
    """POST /api/v1/process."""
    caller = _caller(request)
    _require(caller, "admin")  # the role before the body: a worker learns nothing from it
    store = _store(request)
    body = await schemas.register_body(request, store.limits.max_key_set_size)
    _require(caller, "admin", body.process_name)
    logs.note(request, process_name=body.process_name)
    process = await store.register(
        body.process_name,
        body.key_set_size,
        body.lease_seconds,
        mode=body.mode,
        max_attempts=body.max_attempts,
        retry_backoff_seconds=body.retry_backoff_seconds,
        max_failed_keys=body.max_failed_keys,
    )
    location = f"{API}/process/{quote(process.process_name)}"
    return JSONResponse(process.to_json(), 201, headers={"Location": location})


async def get_process(request: Request) -> Response:
    """GET /api/v1/process/<process_name>."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "worker", name)
    logs.note(request, process_name=name)
    process = await _store(request).process(name)
    return JSONResponse(process.to_json())


async def unregister_process(request: Request) -> Response:
    """DELETE /api/v1/process/<process_name>."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "admin", name)
    logs.note(request, process_name=name)
    process = await _store(request).unregister(name)
    return JSONResponse(process.to_json())


async def list_batch_keys(request: Request) -> Response:
    """GET /api/v1/process/batch_keys/<process_name>[?limit=N&after=K]."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "worker", name)
    logs.note(request, process_name=name)
    page = schemas.key_page(request.query_params)
    # One key past the page tells whether another page follows, in the same reads.
    limit = None if page.limit is None else page.limit + 1
    chunks = _store(request).batch_key_object_chunks(name, page.first, limit)
    # The first chunk is read before answering, so an unknown process is still a 404.
    try:
        head = await anext(chunks)
    except StopAsyncIteration:
        return JSONResponse([])
    if page.limit is None:
        body = schemas.json_value_chunks(head, chunks)
        return StreamingResponse(body, media_type="application/json")
    rows = [*head, *[key async for chunk in chunks for key in chunk]]
    headers = {}
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        query = urlencode({"limit": page.limit, "after": rows[-1]["key"]})
        headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return JSONResponse(rows, headers=headers)


async def get_batch_key(request: Request) -> Response:
    """GET /api/v1/process/<process_name>/keys/<key>."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "worker", name)
    logs.note(request, process_name=name)
    key = schemas.key_number(request.path_params["key"])
    batch_key = await _store(request).batch_key(name, key)
    logs.note(request, key=batch_key.key)  # once known to be a key: a path may hold any number
    return JSONResponse(batch_key.to_json())


async def grant_batch_key(request: Request) -> Response:
    """POST /api/v1/process/batch_keys."""
    caller = _caller(request)
    body = await schemas.grant_body(request)
    _require(caller, "worker", body.process_name)
    logs.note(request, process_name=body.process_name)
    grant = _store(request).grant(
        body.process_name,
        body.machine,
        body.lease_seconds,
        body.wait_seconds,
        holder=_holder(caller),
        request_id=body.request_id,
    )
    try:
        key = (
            await disconnect.unless_disconnected(request, grant)
            if body.wait_seconds
            else await grant
        )
    except disconnect.ClientGone:
        # Nobody to answer: the wait is cancelled, its place in the queue given up.
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    logs.note(request, key=key.key, external_id=key.external_id)
    if disconnect.has_left(request):
        # The answer would be dropped unsent: the key goes back rather than held by nobody.
        await _give_back(_store(request), key)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    # The key's own resource: the lease itself is renewed and released by its external_id.
    location = f"{API}/process/{quote(key.process_name)}/keys/{key.key}"
    # The same request_id again, while its lease lives: that lease, and nothing new made.
    status = 200 if key.replayed else 201
    return JSONResponse(key.to_json(), status, headers={"Location": location})


async def _give_back(store: Store, key: BatchKey) -> None:
    """Release a lease granted to a client that has gone: as it was, no attempt counted."""
    assert key.external_id is not None  # a granted key is held
    try:
        await store.release(key.external_id, "interrupted")
    except CoordinatorError as error:
        logger.warning("lease %s of a client that left stays until it expires: %s",
                       key.external_id, error)  # fmt: skip


async def renew_batch_key(request: Request) -> Response:
    """PATCH /api/v1/process/batch_keys/<external_id>."""
    caller = _caller(request)
    body = await schemas.renew_body(request)
    external_id = request.path_params["external_id"]
    await _require_lease(request, caller, external_id)
    logs.note(request, external_id=external_id)
    holder = "" if caller is None else caller.holder_check
    key = await _store(request).renew(external_id, body.lease_seconds, holder, body.checkpoint)
    logs.note(request, process_name=key.process_name, key=key.key)
    return JSONResponse(key.to_json())


async def release_batch_key(request: Request) -> Response:
    """DELETE /api/v1/process/batch_keys/<external_id>[?outcome=completed|failed|interrupted]."""
    caller = _caller(request)
    outcome = validation.outcome(request.query_params.get("outcome", "completed"))
    external_id = request.path_params["external_id"]
    await _require_lease(request, caller, external_id)
    logs.note(request, external_id=external_id)
    holder = "" if caller is None else caller.holder_check
    key = await _store(request).release(external_id, outcome, holder)
    logs.note(request, process_name=key.process_name, key=key.key)
    return JSONResponse(key.to_json())


async def retry_batch_key(request: Request) -> Response:
    """POST /api/v1/process/<process_name>/keys/<key>/retry (admin)."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "admin", name)
    logs.note(request, process_name=name)
    key = schemas.key_number(request.path_params["key"])
    batch_key = await _store(request).retry_key(name, key)
    logs.note(request, key=batch_key.key)
    return JSONResponse(batch_key.to_json())


async def retry_batch_keys(request: Request) -> Response:
    """POST /api/v1/process/<process_name>/keys/retry (admin): retry the listed keys, or
    every quarantined one, a chunk at a time; 200 with the counts by previous state."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "admin", name)
    logs.note(request, process_name=name)
    keys = await schemas.retry_body(request)
    store = _store(request)
    done = await (store.retry_quarantined(name) if keys is None else store.retry_keys(name, keys))
    return JSONResponse(done.to_json())


async def start_pass(request: Request) -> Response:
    """POST /api/v1/process/<process_name>/passes [{"after": N}] (admin): start the next pass
    now; 200 with the current pass, starting nothing, when pass N was already followed."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "admin", name)
    logs.note(request, process_name=name)
    after = await schemas.start_pass_body(request)
    process, started = await _store(request).follow_pass(name, after)
    number = process.pass_.number if process.pass_ else 1
    location = f"{API}/process/{quote(name)}/passes/{number}"
    return JSONResponse(process.to_json(), 201 if started else 200, headers={"Location": location})


async def get_pass(request: Request) -> Response:
    """GET /api/v1/process/<process_name>/passes/<number>[?wait_seconds=N]."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "worker", name)
    logs.note(request, process_name=name)
    number, wait = schemas.pass_query(request.path_params["number"], request.query_params)
    found = await _store(request).pass_info(name, number, wait, holder=_holder(caller))
    return JSONResponse(found.to_json())


async def get_progress(request: Request) -> Response:
    """GET /api/v1/process/<process_name>/progress: the current pass's counts, rate and ETA,
    and the first quarantined keys."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "worker", name)
    logs.note(request, process_name=name)
    store = _store(request)
    progress = await read_progress(store.redis, store.keys, name)
    return JSONResponse(progress.to_json())


async def revoke_batch_key(request: Request) -> Response:
    """POST /api/v1/process/batch_keys/<external_id>/revoke (admin)."""
    caller = _caller(request)
    # The role before the id: a worker gets the same 403 whether the lease exists or not.
    _require(caller, "admin")
    external_id = request.path_params["external_id"]
    await _require_lease(request, caller, external_id)
    logs.note(request, external_id=external_id)
    key = await _store(request).revoke(external_id)
    logs.note(request, process_name=key.process_name, key=key.key)
    return JSONResponse(key.to_json())


async def list_events(request: Request) -> Response:
    """GET /api/v1/process/<process_name>/events[?after=ID&limit=N]."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "worker", name)
    logs.note(request, process_name=name)
    after, limit = schemas.event_page(request.query_params)
    events = await _store(request).events(name, after, limit)
    return JSONResponse([e.to_json() for e in events])


async def purge_events(request: Request) -> Response:
    """DELETE /api/v1/process/<process_name>/events (admin): forget a deleted process's history."""
    caller = _caller(request)
    name = validation.process_name(request.path_params["process_name"])
    _require(caller, "admin", name)
    logs.note(request, process_name=name)
    await _store(request).purge_history(name)
    return Response(status_code=204)


async def token_rights(request: Request) -> Response:
    """GET /api/v1/token: the caller's role and process patterns (all null: every process), so
    the dashboard can hide what the token may not do; the API still decides each request."""
    caller = _caller(request)
    if caller is None:  # the open API: anyone may do everything
        return JSONResponse({"role": "admin", "processes": None, "tokens_required": False})
    processes = None if caller.processes is None else list(caller.processes)
    return JSONResponse({"role": caller.role, "processes": processes, "tokens_required": True})


async def healthz(_request: Request) -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Redis answers a real script call (a PING would miss a flushed script cache), and
    evicts no keys (maxmemory-policy noeviction)."""
    eviction: EvictionGuard = request.state.eviction
    try:
        await _store(request).check_ready()
        await eviction.check()
    except StoreUnavailable as error:
        return problems.problem("store_unavailable", str(error), {"Retry-After": "1"})
    return JSONResponse({"status": "ready"})


async def openapi_json(_request: Request) -> Response:
    """The OpenAPI 3.1 document of this API."""
    return JSONResponse(openapi.document())
