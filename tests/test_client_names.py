"""The Python client speaks the JSON's names: times as aware datetimes, `process_name`, a lease
that says what it holds, an unreachable server named as such, HOST:PID as the machine."""

from __future__ import annotations

import os
import re
import socket
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from coordinator.client import (
    AsyncHttpCoordinator,
    Coordinator,
    HttpCoordinator,
    NoFreeKey,
    ServiceUnreachable,
    StoreUnavailable,
    UnknownKey,
    UnknownProcess,
)
from coordinator.embedded import free_port
from coordinator.models import BatchKey, Process, epoch_us
from coordinator.problems import problem
from tests.test_client import (  # noqa: F401 - the module's server, and a client per transport
    coordinator,
    server,
)


def _name() -> str:
    return f"names-{uuid.uuid4().hex[:10]}"


def _is_utc(moment: datetime | None) -> bool:
    return isinstance(moment, datetime) and moment.utcoffset() == timedelta(0)


def test_key_times_are_aware_utc_datetimes(coordinator: Coordinator) -> None:  # noqa: F811
    name = _name()
    coordinator.register(name, 2, lease_seconds=60)
    granted = coordinator.acquire(name, "m")
    assert _is_utc(granted.started_at)
    assert _is_utc(granted.expires_at)
    assert granted.last_completed_at is None
    assert granted.started_at is not None
    assert granted.expires_at is not None
    assert granted.expires_at - granted.started_at == timedelta(seconds=60)
    assert abs(datetime.now(UTC) - granted.started_at) < timedelta(minutes=5)
    released = coordinator.release(granted.external_id or "")
    assert _is_utc(released.last_completed_at)
    assert released.expires_at is None
    listed = coordinator.keys(name)
    assert listed[0].last_completed_at == released.last_completed_at
    assert listed[1].last_completed_at is None


def test_a_process_is_named_process_name(coordinator: Coordinator) -> None:  # noqa: F811
    name = _name()
    process = coordinator.register(name, 3)
    assert process.process_name == name
    assert coordinator.process(name).process_name == name
    assert name in [p.process_name for p in coordinator.processes()]


def test_the_old_names_still_answer_but_warn() -> None:
    process = Process("old-names", 3, 60)
    with pytest.deprecated_call(match="process_name"):
        assert process.name == "old-names"
    started = datetime(2026, 11, 27, 5, 47, 7, 46923, tzinfo=UTC)
    key = BatchKey("old-names", 0, None, "id", "m", started, started + timedelta(hours=1), 1)
    with pytest.deprecated_call(match="started_at"):
        assert key.started_us == epoch_us(started)
    with pytest.deprecated_call(match="expires_at"):
        assert key.expires_us == epoch_us(started) + 3600 * 1_000_000
    with pytest.deprecated_call(match="last_completed_at"):
        assert key.last_completed_us is None


def test_the_json_is_unchanged_by_the_names() -> None:
    data = {
        "external_id": "b608a696-7197-42b1-bbbd-cabb962cbaad",
        "key": 0,
        "last_completed_at": "2026-11-27T03:20:16.020479Z",
        "machine": "worker-7",
        "process_name": "nightly-invoices",
        "started_at": "2026-11-27T05:47:07.000000Z",
        "expires_at": "2026-11-27T06:47:07.046923Z",
        "fencing_token": 41,
        "attempts": 0,
        "state": "held",
        "retry_at": None,
    }
    key = BatchKey.from_json(data)
    assert key.expires_at == datetime(2026, 11, 27, 6, 47, 7, 46923, tzinfo=UTC)
    assert key.to_json() == data


def test_a_lease_says_what_it_holds(coordinator: Coordinator) -> None:  # noqa: F811
    name = _name()
    coordinator.register(name, 10)
    coordinator.acquire(name, "first")  # key 0
    context = coordinator.lease(name, "worker")
    assert repr(context) == f"<Lease {name} not held>"
    with context as lease:
        expires = lease.batch_key.to_json()["expires_at"]
        assert re.fullmatch(
            rf"<Lease {name} key 1/10 token {lease.fencing_token} expires {re.escape(expires)}>",
            repr(lease),
        )
        assert repr(context) == repr(lease)
    assert repr(lease) == f"<Lease {name} key 1/10 token {lease.fencing_token} ended>"


def test_the_machine_defaults_to_host_and_pid(coordinator: Coordinator) -> None:  # noqa: F811
    name = _name()
    coordinator.register(name, 2)
    machine = f"{socket.gethostname()}:{os.getpid()}"
    assert coordinator.acquire(name).machine == machine
    with coordinator.lease(name) as lease:
        assert lease.batch_key.machine == machine


def test_no_free_key_carries_a_short_hint_on_both_transports(
    coordinator: Coordinator,  # noqa: F811
) -> None:
    name = _name()
    coordinator.register(name, 1, lease_seconds=3600)
    coordinator.acquire(name, "holder")
    with pytest.raises(NoFreeKey) as busy:
        coordinator.acquire(name, "m")
    assert busy.value.retry_after_seconds == 10
    assert "send wait_seconds (up to 60) to wait for a release" in str(busy.value)


def test_one_process_and_one_key_on_both_transports(coordinator: Coordinator) -> None:  # noqa: F811
    name = _name()
    process = coordinator.register(name, 3)
    assert coordinator.process(name) == process
    granted = coordinator.acquire(name, "m")
    assert coordinator.key(name, granted.key) == granted
    assert coordinator.key(name, 2) == coordinator.keys(name)[2]
    with pytest.raises(UnknownKey) as unknown:
        coordinator.key(name, 3)
    assert (unknown.value.process_name, unknown.value.key) == (name, 3)
    with pytest.raises(UnknownProcess):
        coordinator.process(_name())
    with pytest.raises(UnknownProcess):
        coordinator.key(_name(), 0)


def test_an_unreachable_server_is_service_unreachable() -> None:
    base = f"http://127.0.0.1:{free_port()}"
    with HttpCoordinator(base, timeout=2) as client, pytest.raises(ServiceUnreachable) as caught:
        client.processes()
    assert isinstance(caught.value, StoreUnavailable)  # `except StoreUnavailable` still holds
    assert base in str(caught.value)
    assert "did not answer" in str(caught.value)


@pytest.mark.anyio
async def test_a_proxys_5xx_is_unreachable_and_the_apis_503_is_the_store() -> None:
    api = problem("store_unavailable", "Redis did not answer: LOADING", {"Retry-After": "1"})
    answers = iter(
        [
            httpx.Response(502, text="<html>Bad Gateway</html>"),
            httpx.Response(503, headers=dict(api.headers), content=api.body),
        ]
    )
    transport = httpx.MockTransport(lambda _request: next(answers))
    async with AsyncHttpCoordinator("http://localhost", transport=transport) as http:
        with pytest.raises(ServiceUnreachable, match="502"):
            await http.processes()
        with pytest.raises(StoreUnavailable, match="LOADING") as store:
            await http.processes()
        assert not isinstance(store.value, ServiceUnreachable)


@pytest.mark.anyio
async def test_the_http_client_gets_one_process_by_its_own_resource() -> None:
    sent: list[str] = []
    body = {"process_name": "p", "key_set_size": 3, "key_space_size": 3, "lease_seconds": 60}

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json=body)

    transport = httpx.MockTransport(answer)
    async with AsyncHttpCoordinator("http://localhost", transport=transport) as http:
        assert await http.process("p") == Process("p", 3, 60)
    assert sent == ["GET /api/v1/process/p"]
