"""The client over the HTTP API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from coordinator import errors
from coordinator.auth import Forbidden, Unauthorized
from coordinator.client.base import AsyncCoordinator
from coordinator.models import BatchKey, Event, Process

API = "/api/v1"


class AsyncHttpCoordinator(AsyncCoordinator):
    """Talks to `coordinator serve` at `base_url`; `token` is sent as a Bearer token.

    `transport` replaces httpx's network transport (a proxy, mTLS, or an app in-process).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                       timeout=timeout, transport=transport)  # fmt: skip
        self.base_url = base_url

    async def register(
        self, name: str, key_set_size: int | None = None, lease_seconds: int | None = None
    ) -> Process:
        """Register a process; raises ProcessExists if the name is taken."""
        body: dict[str, Any] = {"process_name": name}
        if key_set_size is not None:
            body["key_set_size"] = key_set_size
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        data = await self._call("POST", f"{API}/process", name=name, json=body)
        return Process.from_json(data)

    async def processes(self) -> list[Process]:
        """Every registered process, by name."""
        return [Process.from_json(p) for p in await self._call("GET", f"{API}/process")]

    async def process(self, name: str) -> Process:
        """One registered process; raises UnknownProcess."""
        for process in await self.processes():
            if process.name == name:
                return process
        raise errors.UnknownProcess(name)

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

    async def acquire(
        self,
        name: str,
        machine: str,
        lease_seconds: int | None = None,
        wait_seconds: float = 0,
    ) -> BatchKey:
        """Lease the stalest free key, waiting up to `wait_seconds` for one to free."""
        body: dict[str, Any] = {"process_name": name, "machine": machine}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        if wait_seconds:
            body["wait_seconds"] = wait_seconds
        timeout = self._http.timeout.read or 0
        data = await self._call(
            "POST", f"{API}/process/batch_keys", name=name, json=body,
            timeout=timeout + wait_seconds,
        )  # fmt: skip
        return BatchKey.from_json(data)

    async def renew(self, external_id: str, lease_seconds: int | None = None) -> BatchKey:
        """Extend a live lease from now."""
        body = {} if lease_seconds is None else {"lease_seconds": lease_seconds}
        data = await self._call("PATCH", f"{API}/process/batch_keys/{external_id}",
                                external_id=external_id, json=body)  # fmt: skip
        return BatchKey.from_json(data)

    async def release(self, external_id: str, outcome: str = "completed") -> BatchKey:
        """End a live lease as `completed` or `failed`."""
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
        **kwargs: Any,  # noqa: ANN401 - passed through to httpx
    ) -> Any:  # noqa: ANN401 - decoded JSON
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise errors.StoreUnavailable(f"{self.base_url} did not answer: {error}") from error
        if response.is_success:
            return response.json() if response.content else None  # 204: no body
        raise _problem_error(response, name, external_id)


def _problem_error(response: httpx.Response, name: str, external_id: str) -> Exception:
    """The exception a problem response stands for, the same the direct transport raises.

    Anything a proxy might answer instead (HTML, an HTTP-date Retry-After) still maps by
    status: 5xx is StoreUnavailable, so a caller retries it like Redis being down.
    """
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {}
    code, detail = str(problem.get("code") or ""), str(problem.get("detail") or response.text)
    retry_after = response.headers.get("Retry-After", "1")
    retry_after_us = (int(retry_after) if retry_after.isdecimal() else 1) * 1_000_000
    field, _, rest = detail.partition("' ")
    by_code: dict[str, Callable[[], Exception]] = {
        "unknown_process": lambda: errors.UnknownProcess(name),
        "process_exists": lambda: errors.ProcessExists(name, detail),
        "no_free_key": lambda: errors.NoFreeKey(name, retry_after_us),
        "unknown_lease": lambda: errors.UnknownLease(external_id),
        "lease_gone": lambda: errors.LeaseGone(external_id),
        "invalid_field": lambda: errors.InvalidField(field.strip("'"), rest),
        "store_unavailable": lambda: errors.StoreUnavailable(detail),
        "unauthorized": lambda: Unauthorized(detail),
        "forbidden": lambda: Forbidden(detail),
        "not_lease_holder": lambda: errors.NotLeaseHolder(external_id),
    }
    if code in by_code:
        return by_code[code]()
    if response.status_code >= 500:
        return errors.StoreUnavailable(f"{response.status_code}: {detail}")
    return errors.CoordinatorError(f"{response.status_code} {code}: {detail}")
