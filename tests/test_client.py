"""The worker's client: one suite, run on both transports, blocking and async."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from coordinator.client import (
    AsyncHttpCoordinator,
    AsyncRedisCoordinator,
    Coordinator,
    HttpCoordinator,
    InvalidField,
    LeaseGone,
    LeaseLost,
    NoFreeKey,
    ProcessExists,
    RedisCoordinator,
    UnknownLease,
    UnknownProcess,
)
from coordinator.embedded import EmbeddedValkey
from tests.test_serve import _env, serving

PREFIX = f"client{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(valkey: EmbeddedValkey, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`coordinator serve` on the session Valkey, under this module's prefix."""
    env = _env(
        tmp_path_factory.mktemp("serve") / "data",
        COORDINATOR_REDIS_URL=valkey.url,
        COORDINATOR_KEY_PREFIX=PREFIX,
    )
    with serving(env) as served:
        yield served.base


@pytest.fixture(params=["http", "redis"])
def coordinator(
    request: pytest.FixtureRequest, server: str, valkey: EmbeddedValkey
) -> Iterator[Coordinator]:
    """The blocking client over each transport; both see the same Redis state."""
    client: Coordinator
    if request.param == "http":
        client = HttpCoordinator(server)
    else:
        client = RedisCoordinator(valkey.url, prefix=PREFIX)
    with client:
        yield client


def _name() -> str:
    return f"job-{uuid.uuid4().hex[:10]}"


def test_a_whole_cycle(coordinator: Coordinator) -> None:
    name = _name()
    process = coordinator.register(name, 3, lease_seconds=60)
    assert (process.process_name, process.key_set_size, process.lease_seconds) == (name, 3, 60)
    assert process in coordinator.processes()
    assert coordinator.process(name) == process
    key = coordinator.acquire(name, "m1")
    assert key.key == 0
    assert key.held
    renewed = coordinator.renew(key.external_id or "", lease_seconds=120)
    assert renewed.expires_at is not None
    assert key.expires_at is not None
    assert renewed.expires_at > key.expires_at
    released = coordinator.release(key.external_id or "")
    assert released.last_completed_at is not None
    listed = coordinator.keys(name)
    assert [k.key for k in listed] == [0, 1, 2]
    assert listed[0].last_completed_at == released.last_completed_at
    assert coordinator.unregister(name) == process
    assert process not in coordinator.processes()


def test_errors_are_the_same_types_on_both_transports(coordinator: Coordinator) -> None:
    name = _name()
    with pytest.raises(UnknownProcess):
        coordinator.acquire(name, "m")
    coordinator.register(name, 1)
    with pytest.raises(ProcessExists):
        coordinator.register(name, 1)
    key = coordinator.acquire(name, "m")
    with pytest.raises(NoFreeKey) as busy:
        coordinator.acquire(name, "m")
    assert busy.value.retry_after_seconds >= 1
    coordinator.release(key.external_id or "")
    with pytest.raises(LeaseGone):
        coordinator.release(key.external_id or "")
    with pytest.raises(UnknownLease):
        coordinator.renew(str(uuid.uuid4()))
    with pytest.raises(InvalidField) as invalid:
        coordinator.register(_name(), 0)
    assert invalid.value.field == "key_set_size"


def test_a_lease_releases_completed_when_the_block_ends(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 4)
    with coordinator.lease(name, "worker") as lease:
        assert lease.key == 0
        assert lease.key_set_size == 4
        assert lease.fencing_token >= 1
        assert [row for row in range(12) if lease.owns(row)] == [0, 4, 8]
        assert lease.sql_predicate("id") == "id % 4 = 0"
        assert coordinator.keys(name)[0].external_id == lease.external_id
        lease.check()
    key = coordinator.keys(name)[0]
    assert not key.held
    assert key.last_completed_at is not None


def test_a_lease_releases_failed_when_the_block_raises(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 2)
    with pytest.raises(RuntimeError, match="boom"), coordinator.lease(name, "worker"):
        raise RuntimeError("boom")
    key = coordinator.keys(name)[0]
    assert not key.held
    assert key.last_completed_at is None
    # A failed key keeps its place: it is handed out again first.
    assert coordinator.acquire(name, "again").key == 0


def test_a_lease_is_renewed_while_the_block_runs(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 1)
    with coordinator.lease(name, "worker", lease_seconds=1) as lease:
        first_expiry = lease.batch_key.expires_at
        time.sleep(2.2)  # more than twice the lease: only renewal keeps it
        lease.check()
        held = coordinator.keys(name)[0]
        assert held.external_id == lease.external_id
        assert held.expires_at is not None
        assert first_expiry is not None
        assert held.expires_at > first_expiry
    assert coordinator.keys(name)[0].last_completed_at is not None


def test_a_lost_lease_is_never_silent(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 1)
    with pytest.raises(LeaseLost), coordinator.lease(name, "worker", lease_seconds=1) as lease:
        coordinator.unregister(name)  # ends every lease of the process
        deadline = time.monotonic() + 5
        while not lease.lost:
            assert time.monotonic() < deadline, "renewal never noticed the lease was gone"
            time.sleep(0.05)
        with pytest.raises(LeaseLost):
            lease.check()
    # Leaving normally with a lost lease raised LeaseLost above: the work did not count.


def test_acquire_waits_for_a_release(coordinator: Coordinator) -> None:
    name = _name()
    coordinator.register(name, 1)
    held = coordinator.acquire(name, "holder", lease_seconds=1)
    started = time.monotonic()
    granted = coordinator.acquire(name, "waiter", wait_seconds=10)
    assert granted.key == held.key
    assert (granted.fencing_token or 0) > (held.fencing_token or 0)
    assert time.monotonic() - started < 5


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["http", "redis"])
async def test_the_async_clients_share_the_api(
    transport: str, server: str, valkey: EmbeddedValkey
) -> None:
    client = (
        AsyncHttpCoordinator(server)
        if transport == "http"
        else AsyncRedisCoordinator(valkey.url, prefix=PREFIX)
    )
    name = _name()
    async with client:
        await client.register(name, 2)
        async with client.lease(name, "async-worker") as lease:
            assert lease.key == 0
            assert lease.key_set_size == 2
            keys = await client.keys(name)
            assert keys[0].external_id == lease.external_id
        with pytest.raises(ValueError, match="stop"):
            async with client.lease(name, "async-worker"):
                raise ValueError("stop")
        keys = await client.keys(name)
        assert keys[0].last_completed_at is not None
        assert keys[1].last_completed_at is None
        assert not any(k.held for k in keys)
        await client.unregister(name)
