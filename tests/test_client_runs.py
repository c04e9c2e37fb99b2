"""Batch runs through the worker's client: one suite, run on both transports."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from coordinator.client import (
    AllQuarantined,
    AsyncCoordinator,
    AsyncHttpCoordinator,
    AsyncRedisCoordinator,
    Coordinator,
    LeaseLost,
    PassComplete,
    StoreUnavailable,
    UnknownPass,
)
from coordinator.embedded import EmbeddedValkey
from coordinator.models import BatchKey
from tests import test_client

# test_client's fixtures: a `coordinator serve` for this module, the blocking client over
# each transport, on the session Valkey under test_client's prefix.
server, coordinator, PREFIX = test_client.server, test_client.coordinator, test_client.PREFIX


def _name() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


def test_register_takes_the_batch_run_options(coordinator: Coordinator) -> None:
    name = _name()
    process = coordinator.register(name, 3, mode="once", max_attempts=2, retry_backoff_seconds=5)
    assert (process.mode, process.max_attempts, process.retry_backoff_seconds) == ("once", 2, 5)
    assert process.pass_ is not None
    assert process.pass_.number == 1
    assert coordinator.process(name) == process


def test_a_once_pass_completes_refuses_grants_and_starts_again(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 2, mode="once")
    for _ in range(2):
        coordinator.release(coordinator.acquire(name, "m").external_id or "")
    done = coordinator.pass_info(name, 1)
    assert done.complete
    assert (done.number, done.keys_done, done.keys_quarantined) == (1, 2, 0)
    with pytest.raises(PassComplete):
        coordinator.acquire(name, "m")
    with pytest.raises(PassComplete):  # a waiting grant is answered at once
        coordinator.acquire(name, "m", wait_seconds=5)
    started = coordinator.start_pass(name)
    assert started.pass_ is not None
    assert started.pass_.number == 2
    assert not coordinator.pass_info(name, 2).complete
    with pytest.raises(UnknownPass) as unknown:
        coordinator.pass_info(name, 3)
    assert unknown.value.number == 3
    assert coordinator.acquire(name, "m").key in {0, 1}


def test_a_quarantined_key_is_retried_by_retry_key(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 1, max_attempts=1)
    coordinator.release(coordinator.acquire(name, "m").external_id or "", "failed")
    quarantined = coordinator.key(name, 0)
    assert (quarantined.state, quarantined.attempts) == ("quarantined", 1)
    with pytest.raises(AllQuarantined):
        coordinator.acquire(name, "m")
    retried = coordinator.retry_key(name, 0)
    assert (retried.state, retried.attempts) == ("free", 0)
    assert coordinator.acquire(name, "m").key == 0


def test_the_same_request_id_answers_the_same_lease(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 3)
    first = coordinator.acquire(name, "m", request_id="nightly-0001")
    again = coordinator.acquire(name, "m", request_id="nightly-0001")
    assert not first.replayed
    assert again.replayed
    assert (again.external_id, again.key, again.fencing_token) == (
        first.external_id,
        first.key,
        first.fencing_token,
    )
    assert [k.key for k in coordinator.keys(name) if k.held] == [first.key]
    other = coordinator.acquire(name, "m")  # a fresh request_id: a second key
    assert other.key != first.key


def test_renew_saves_keeps_and_clears_the_checkpoint(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 1)
    lease = coordinator.acquire(name, "m").external_id or ""
    coordinator.renew(lease, checkpoint="row 40")
    assert coordinator.key(name, 0).checkpoint == "row 40"
    coordinator.renew(lease)  # left out: kept
    assert coordinator.key(name, 0).checkpoint == "row 40"
    coordinator.release(lease, "failed")
    again = coordinator.acquire(name, "m")
    assert again.checkpoint == "row 40"
    coordinator.renew(again.external_id or "", checkpoint=None)
    assert coordinator.key(name, 0).checkpoint is None


def test_a_blocking_lease_saves_a_checkpoint_for_the_next_holder(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 1)
    with pytest.raises(RuntimeError, match="crash"), coordinator.lease(name, "first") as lease:
        assert lease.previous_checkpoint is None
        lease.checkpoint("row 40")  # blocks until saved: the API shows it at once
        assert coordinator.key(name, 0).checkpoint == "row 40"
        raise RuntimeError("crash")
    with coordinator.lease(name, "second") as lease:
        assert lease.previous_checkpoint == "row 40"
        assert lease.async_lease.previous_checkpoint == "row 40"
    assert coordinator.key(name, 0).checkpoint is None  # the completed release cleared it
    with pytest.raises(LeaseLost), coordinator.lease(name, "third") as lease:  # ends lost
        coordinator.revoke(lease.external_id)
        with pytest.raises(LeaseLost):
            lease.checkpoint("too late")
    assert coordinator.key(name, 0).checkpoint is None


def _async_client(transport: str, server: str, valkey: EmbeddedValkey) -> AsyncCoordinator:
    if transport == "http":
        return AsyncHttpCoordinator(server)
    return AsyncRedisCoordinator(valkey.url, prefix=PREFIX)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["http", "redis"])
async def test_a_checkpoint_saved_by_one_lease_is_seen_by_the_next_holder(
    transport: str, server: str, valkey: EmbeddedValkey
) -> None:
    name = _name()
    async with _async_client(transport, server, valkey) as client:
        await client.register(name, 1)
        with pytest.raises(RuntimeError, match="crash"):
            async with client.lease(name, "first") as lease:
                assert lease.previous_checkpoint is None
                await lease.checkpoint("row 40")
                raise RuntimeError("crash")
        async with client.lease(name, "second") as lease:
            assert lease.previous_checkpoint == "row 40"
        # A completed release clears it.
        assert (await client.key(name, 0)).checkpoint is None


class DropFirstGrantAnswer(httpx.AsyncBaseTransport):
    """Forwards every request, but loses the answer to the first grant (a reset connection)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.grants = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/batch_keys"):
            self.grants += 1
            if self.grants == 1:
                await response.aclose()
                raise httpx.ReadError("connection reset", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.anyio
async def test_a_grant_whose_answer_was_lost_takes_one_key_over_http(server: str) -> None:
    name = _name()
    transport = DropFirstGrantAnswer()
    async with AsyncHttpCoordinator(server, transport=transport) as client:
        await client.register(name, 3)
        key = await client.acquire(name, "m")
        assert transport.grants == 2  # the first was granted, its answer lost, then sent again
        assert key.replayed
        assert [k.key for k in await client.keys(name) if k.held] == [key.key]


@pytest.mark.anyio
async def test_a_grant_whose_answer_was_lost_takes_one_key_on_redis(
    valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _name()
    async with AsyncRedisCoordinator(valkey.url, prefix=PREFIX) as client:
        grant = client.store.grant
        calls: list[str] = []

        async def lose_first_answer(*args: Any, **kwargs: Any) -> BatchKey:
            key = await grant(*args, **kwargs)
            calls.append(kwargs["request_id"])
            if len(calls) == 1:
                raise StoreUnavailable("timed out reading the reply")
            return key

        monkeypatch.setattr(client.store, "grant", lose_first_answer)
        await client.register(name, 3)
        key = await client.acquire(name, "m")
        assert len(calls) == 2
        assert calls[0] == calls[1]
        assert key.replayed
        assert [k.key for k in await client.keys(name) if k.held] == [key.key]
