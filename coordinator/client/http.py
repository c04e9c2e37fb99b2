"""The client over the HTTP API."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson

from coordinator import errors
from coordinator.auth import Forbidden, Unauthorized
from coordinator.client.base import AsyncCoordinator
from coordinator.client.outage import without_credentials
from coordinator.locate import locate
from coordinator.models import BatchKey, Event, Pass, Process, Redrive
from coordinator.progress import Progress
from coordinator.validation import Unset

API = "/api/v1"
KEYS_PAGE = 10_000  # keys per request of iter_keys: the most a page may hold
PROCESSES_PAGE = 1000  # processes per request of iter_processes
# A bulk retry answers when it is done: a million quarantined keys take some seconds.
RETRY_TIMEOUT = 300.0


class AsyncHttpCoordinator(AsyncCoordinator):
    """Talks to `coordinator serve` at `base_url`; `token` is sent as a Bearer token.

    As the CLI does: without `base_url`, COORDINATOR_URL, else the server running on the data
    folder (COORDINATOR_DATA_DIR, else ./.coordinator-data), else http://127.0.0.1:8000;
    without `token`, COORDINATOR_TOKEN (`token=""` sends none). `service` says which.
    `transport` replaces httpx's network transport (a proxy, mTLS, or an app in-process);
    `outage_budget_seconds` is how long a worker's call rides out an outage (README).
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        outage_budget_seconds: float | None = None,
    ) -> None:
        self.service = locate(base_url, token)
        base_url, token = self.service.url, self.service.token
        super().__init__(f"the service at {without_credentials(base_url)}", outage_budget_seconds)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                       timeout=timeout, transport=transport)  # fmt: skip
        self.base_url = base_url

    async def register(
        self,
        name: str,
        key_set_size: int | None = None,
        lease_seconds: int | None = None,
        *,
        mode: str | None = None,
        max_attempts: int | None = None,
        retry_backoff_seconds: int | None = None,
        max_failed_keys: int | None = None,
    ) -> Process:
        """Register a process; raises ProcessExists if the name is taken."""
        fields = {
            "key_set_size": key_set_size,
            "lease_seconds": lease_seconds,
            "mode": mode,
            "max_attempts": max_attempts,
            "retry_backoff_seconds": retry_backoff_seconds,
            "max_failed_keys": max_failed_keys,
        }
        body: dict[str, Any] = {"process_name": name}
        body |= {field: value for field, value in fields.items() if value is not None}
        data = await self._call("POST", f"{API}/process", name=name, json=body)
        return Process.from_json(data)

    async def processes(self) -> list[Process]:
        """Every registered process, by name."""
        return [Process.from_json(p) for p in await self._call("GET", f"{API}/process")]

    async def iter_processes(
        self, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[Process]:
        """Registered processes by name: one paged request (`?limit=N&after=NAME&prefix=P`) at
        a time, following each page's Link to the next."""
        left = limit
        while left is None or left > 0:
            params: dict[str, str | int] = {
                "limit": PROCESSES_PAGE if left is None else min(left, PROCESSES_PAGE)
            }
            params |= {"prefix": prefix} if prefix else {}
            params |= {"after": after} if after is not None else {}
            response = await self._send("GET", f"{API}/process", params=params)
            rows = _json(response)
            for row in rows:
                yield Process.from_json(row)
            if left is not None:
                left -= len(rows)
            following = response.links.get("next", {}).get("url")
            if following is None:
                return
            after = httpx.URL(following).params["after"]

    async def _process(self, name: str) -> Process:
        """One request for a process; raises UnknownProcess."""
        return Process.from_json(await self._call("GET", f"{API}/process/{name}", name=name))

    async def _progress(self, name: str) -> Progress:
        """One request for a process's progress; raises UnknownProcess."""
        data = await self._call("GET", f"{API}/process/{name}/progress", name=name)
        return Progress.from_json(data)

    async def unregister(self, name: str) -> Process:
        """Delete a process, ending all of its leases."""
        return Process.from_json(await self._call("DELETE", f"{API}/process/{name}", name=name))

    async def purge_history(self, name: str) -> None:
        """Forget a deleted process's history now (admin), rather than when it expires."""
        await self._call("DELETE", f"{API}/process/{name}/events", name=name)

    async def keys(self, name: str) -> list[BatchKey]:
        """The state of every key of a process."""
        rows = await self._call("GET", f"{API}/process/batch_keys/{name}", name=name)
        return [BatchKey.from_json(row) for row in rows]

    async def key(self, name: str, key: int) -> BatchKey:
        """One key of a process; raises UnknownProcess, or UnknownKey outside its keys."""
        data = await self._call("GET", f"{API}/process/{name}/keys/{key}", name=name, key=key)
        return BatchKey.from_json(data)

    async def iter_keys(
        self, name: str, after: int | None = None, limit: int | None = None
    ) -> AsyncIterator[BatchKey]:
        """The keys of a process in order, after key `after`, at most `limit`: one paged
        request (`?limit=N&after=K`) at a time, following each page's Link to the next."""
        left = limit
        while left is None or left > 0:
            params = {"limit": KEYS_PAGE if left is None else min(left, KEYS_PAGE)}
            if after is not None:
                params["after"] = after
            response = await self._send(
                "GET", f"{API}/process/batch_keys/{name}", name=name, params=params
            )
            rows = _json(response)
            for row in rows:
                yield BatchKey.from_json(row)
            if left is not None:
                left -= len(rows)
            following = response.links.get("next", {}).get("url")
            if following is None:
                return
            after = int(httpx.URL(following).params["after"])

    async def _grant(
        self,
        name: str,
        machine: str,
        lease_seconds: int | None,
        wait_seconds: float,
        request_id: str,
    ) -> BatchKey:
        """One grant request; 200 (not 201) answers an earlier lease of `request_id`."""
        body: dict[str, Any] = {"process_name": name, "machine": machine, "request_id": request_id}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        if wait_seconds:
            body["wait_seconds"] = wait_seconds
        timeout = self._http.timeout.read or 0
        response = await self._send(
            "POST", f"{API}/process/batch_keys", name=name, json=body,
            timeout=timeout + wait_seconds,
        )  # fmt: skip
        key = BatchKey.from_json(_json(response))
        return dataclasses.replace(key, replayed=response.status_code == httpx.codes.OK)

    async def _renew(
        self, external_id: str, lease_seconds: int | None, checkpoint: str | Unset | None
    ) -> BatchKey:
        """One renewal request, saving `checkpoint` unless left out."""
        body: dict[str, Any] = {} if lease_seconds is None else {"lease_seconds": lease_seconds}
        if not isinstance(checkpoint, Unset):
            body["checkpoint"] = checkpoint
        data = await self._call("PATCH", f"{API}/process/batch_keys/{external_id}",
                                external_id=external_id, json=body)  # fmt: skip
        return BatchKey.from_json(data)

    async def _start_pass(self, name: str, after: int | None) -> Process:
        """One request to start the next pass, if `after` (when given) is still the current
        one; returns the process in its current pass."""
        body = None if after is None else {"after": after}
        return Process.from_json(
            await self._call(
                "POST", f"{API}/process/{name}/passes", name=name, number=after, json=body
            )
        )

    async def _pass_info(self, name: str, number: int, wait_seconds: int) -> Pass:
        """One request for pass `number`, waiting up to `wait_seconds` for it to complete."""
        timeout = self._http.timeout.read or 0
        data = await self._call(
            "GET", f"{API}/process/{name}/passes/{number}", name=name, number=number,
            params={"wait_seconds": wait_seconds}, timeout=timeout + wait_seconds,
        )  # fmt: skip
        return Pass.from_json(data)

    async def retry_key(self, name: str, key: int) -> BatchKey:
        """Lift a key's quarantine and backoff and reset its attempts (admin)."""
        data = await self._call("POST", f"{API}/process/{name}/keys/{key}/retry",
                                name=name, key=key)  # fmt: skip
        return BatchKey.from_json(data)

    async def retry_keys(self, name: str, keys: list[int]) -> Redrive:
        """Retry each of `keys` as `retry_key` does, all or none (admin)."""
        return await self._retry(name, {"keys": keys})

    async def retry_quarantined(self, name: str) -> Redrive:
        """Retry every quarantined key of the process (admin), a chunk at a time."""
        return await self._retry(name, {"state": "quarantined"})

    async def _retry(self, name: str, body: dict[str, Any]) -> Redrive:
        data = await self._call("POST", f"{API}/process/{name}/keys/retry", name=name,
                                json=body, timeout=RETRY_TIMEOUT)  # fmt: skip
        return Redrive.from_json(data)

    async def _release(self, external_id: str, outcome: str) -> BatchKey:
        """One release request."""
        data = await self._call("DELETE", f"{API}/process/batch_keys/{external_id}",
                                external_id=external_id, params={"outcome": outcome})  # fmt: skip
        return BatchKey.from_json(data)

    async def revoke(self, external_id: str) -> BatchKey:
        """End a lease now, as an administrator."""
        data = await self._call("POST", f"{API}/process/batch_keys/{external_id}/revoke",
                                external_id=external_id)  # fmt: skip
        return BatchKey.from_json(data)

    async def events(self, name: str, after: str = "-", limit: int = 100) -> list[Event]:
        """The process's history after event id `after`, oldest first."""
        rows = await self._call("GET", f"{API}/process/{name}/events", name=name,
                                params={"after": after, "limit": limit})  # fmt: skip
        return [Event.from_json(row) for row in rows]

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        name: str = "",
        external_id: str = "",
        key: int | None = None,
        number: int | None = None,
        **kwargs: Any,  # noqa: ANN401 - passed through to httpx
    ) -> Any:  # noqa: ANN401 - decoded JSON
        response = await self._send(
            method, path, name=name, external_id=external_id, key=key, number=number, **kwargs
        )
        return _json(response) if response.content else None  # 204: no body

    async def _send(
        self,
        method: str,
        path: str,
        *,
        name: str = "",
        external_id: str = "",
        key: int | None = None,
        number: int | None = None,
        **kwargs: Any,  # noqa: ANN401 - passed through to httpx
    ) -> httpx.Response:
        """A successful response, or the exception its failure stands for."""
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise errors.ServiceUnreachable(
                f"the service at {self.base_url} did not answer: {error!r}"
            ) from error
        if response.is_success:
            return response
        raise _problem_error(response, name, external_id, key, number)


def _json(response: httpx.Response) -> Any:  # noqa: ANN401 - decoded JSON
    """A successful response's JSON; UnexpectedReply if it is something else (a web page)."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise errors.UnexpectedReply(_not_the_api(response)) from None


def _not_the_api(response: httpx.Response) -> str:
    """One line for a reply that is not the API's JSON, rather than the page it holds."""
    kind = response.headers.get("Content-Type", "no content type").partition(";")[0]
    return (
        f"{response.request.url} answered {response.status_code} with {kind} rather than the"
        " coordinator's JSON: is it the coordinator's URL, or a proxy before it?"
    )


def _problem_error(
    response: httpx.Response,
    name: str,
    external_id: str,
    key: int | None = None,
    number: int | None = None,
) -> Exception:
    """The exception a problem response stands for, the same the direct transport raises.

    Anything a proxy might answer instead (HTML, an HTTP-date Retry-After) still maps by
    status: a 5xx is StoreUnavailable (ServiceUnreachable when no problem says more), so a
    caller retries it like Redis being down. The service's own 500 `internal_error` is a fault
    in it, not an outage: retrying it for the outage budget would only hide it.
    """
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):  # not the API's JSON: a web page, a proxy's error
        retry = response.status_code >= 500
        return (errors.ServiceUnreachable if retry else errors.UnexpectedReply)(
            _not_the_api(response)
        )
    code, detail = str(problem.get("code") or ""), str(problem.get("detail") or response.text)
    retry_after = response.headers.get("Retry-After", "1")
    retry_after_us = (int(retry_after) if retry_after.isdecimal() else 1) * 1_000_000
    field, _, rest = detail.partition("' ")
    by_code: dict[str, Callable[[], Exception]] = {
        "unknown_process": lambda: errors.UnknownProcess(name),
        "process_exists": lambda: errors.ProcessExists(name, detail),
        "no_free_key": lambda: errors.NoFreeKey(name, retry_after_us),
        "pass_complete": lambda: errors.PassComplete(name),
        "pass_failed": lambda: errors.PassFailed(name),
        "all_quarantined": lambda: errors.AllQuarantined(name),
        "unknown_lease": lambda: errors.UnknownLease(external_id),
        "lease_gone": lambda: errors.LeaseGone(external_id),
        "invalid_field": lambda: errors.InvalidField(field.strip("'"), rest),
        "store_unavailable": lambda: errors.StoreUnavailable(detail),
        "unauthorized": lambda: Unauthorized(detail),
        "forbidden": lambda: Forbidden(detail),
        "not_lease_holder": lambda: errors.NotLeaseHolder(external_id),
        "internal_error": lambda: errors.CoordinatorError(
            f"{response.status_code} {code}: {detail}"
        ),
    }
    if key is not None:  # a 404 for the key asked about
        by_code["unknown_key"] = lambda: errors.UnknownKey(name, key)
    if number is not None:  # a 404 for the pass asked about
        by_code["unknown_pass"] = lambda: errors.UnknownPass(name, number)
    if code in by_code:
        return by_code[code]()
    if response.status_code >= 500 and code:
        return errors.StoreUnavailable(f"{response.status_code} {code}: {detail}")
    if response.status_code >= 500:
        return errors.ServiceUnreachable(f"{response.status_code}: {detail}")
    return errors.CoordinatorError(f"{response.status_code} {code}: {detail}")
