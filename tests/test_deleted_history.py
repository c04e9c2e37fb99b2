"""Nothing grows without bound: a deleted process leaves only its fence behind.

Its history (events stream) and the id its leases resolve by (so they answer 410, not 404)
expire after COORDINATOR_DELETED_HISTORY_SECONDS, or at once when an admin purges them. The
fence stays so fencing tokens keep rising if the name is registered again.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import anyio
import pytest
from redis.asyncio import Redis

from coordinator import lease_id
from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import ConfigError, Settings
from coordinator.embedded import EmbeddedValkey
from coordinator.errors import LeaseGone, ProcessExists, UnknownLease, UnknownProcess
from coordinator.store import Limits, Store
from tests.conftest import serve

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
ADMIN, ADMIN_LINE = new_token("admin")
WORKER, WORKER_LINE = new_token("worker")
# Names as a nightly job makes them, one per run.
RUNS = 50


async def _remaining(redis: Redis, prefix: str) -> dict[str, int]:
    """Every key left under the prefix, with the bytes Redis says it takes."""
    return {
        key: int(await redis.memory_usage(key) or 0)
        async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)
    }


async def _run_and_delete(store: Store, name: str) -> str:
    """Register, lease, complete, lease again, then delete: one nightly run. Returns an id."""
    await store.register(name, key_set_size=4)
    await store.release((await store.grant(name, "w")).external_id)
    held = await store.grant(name, "w")
    await store.unregister(name)
    return held.external_id


async def test_purged_names_leave_only_their_fence_under_200_bytes(
    valkey_redis: Redis, prefix: str
) -> None:
    store = Store(valkey_redis, prefix=prefix)
    names = [f"nightly-2026-11-{day:02d}-{run}" for day in range(1, 11) for run in range(5)]
    assert len(names) == RUNS
    for name in names:
        await _run_and_delete(store, name)
        await store.purge_history(name)
    left = await _remaining(valkey_redis, prefix)
    assert set(left) == {f"{prefix}:{{{name}}}:fence" for name in names}
    per_name = sum(left.values()) / RUNS
    print(f"bytes left per deleted name: {per_name:.0f}")
    assert per_name < 200
    # Not even an entry in the registry or in the id table remains.
    assert await valkey_redis.hlen(store.keys.process_ids) == 0
    assert await valkey_redis.zcard(store.keys.registry) == 0


async def test_the_history_expires_by_itself(
    redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(redis, prefix=prefix, limits=Limits(deleted_history_seconds=1))
    name = new_name()
    external_id = await _run_and_delete(store, name)
    # While the history stays, it reads and the lease answers 410.
    assert [e.type for e in await store.events(name)][-1] == "deleted"
    with pytest.raises(LeaseGone):
        await store.renew(external_id)
    for _ in range(100):  # Redis expires the keys; poll for up to 10 s
        if len(await _remaining_names(redis, prefix)) == 1:
            break
        await anyio.sleep(0.1)
    assert await _remaining_names(redis, prefix) == {f"{prefix}:{{{name}}}:fence"}
    with pytest.raises(UnknownProcess):
        await store.events(name)
    fresh = Store(redis, prefix=prefix)  # no cached id: a replica that never saw the name
    with pytest.raises(UnknownLease):
        await fresh.renew(external_id)


async def _remaining_names(redis: Redis, prefix: str) -> set[str]:
    return {key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)}


async def test_registering_again_keeps_the_history_for_good(
    redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(redis, prefix=prefix)
    name = new_name()
    old = await _run_and_delete(store, name)
    events = store.keys.process(name).events
    assert await redis.ttl(events) > 0
    await store.register(name, key_set_size=2)
    assert await redis.ttl(events) == -1
    new = await store.grant(name, "w")
    # Tokens keep rising across the delete; the old lease is still gone, not unknown.
    assert lease_id.parse(new.external_id)[1] > lease_id.parse(old)[1]  # type: ignore[index]
    with pytest.raises(LeaseGone):
        await store.release(old)
    await store.release(new.external_id)


async def test_purge_refuses_a_registered_process_and_an_unknown_name(
    redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(redis, prefix=prefix)
    name = new_name()
    await store.register(name)
    with pytest.raises(ProcessExists):
        await store.purge_history(name)
    assert [e.type for e in await store.events(name)] == ["registered"]
    with pytest.raises(UnknownProcess):
        await store.purge_history(new_name())


async def test_an_admin_purges_over_http(
    redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    settings = Settings(
        key_prefix=prefix, tokens=f"{ADMIN_LINE};{WORKER_LINE}", deleted_history_seconds=86_400
    )
    admin = {"Authorization": f"Bearer {ADMIN}"}
    worker = {"Authorization": f"Bearer {WORKER}"}
    name = new_name()
    async with serve(create_app(settings, redis=redis)) as client:
        assert (
            await client.post(API, json={"process_name": name}, headers=admin)
        ).status_code == 201
        busy = await client.delete(f"{API}/{name}/events", headers=admin)
        assert busy.status_code == 409
        assert busy.json()["code"] == "process_exists"
        assert (await client.delete(f"{API}/{name}", headers=admin)).status_code == 200
        assert (await client.get(f"{API}/{name}/events", headers=admin)).status_code == 200
        # The deployment's retention is the one applied.
        assert 86_390 <= await redis.ttl(f"{prefix}:{{{name}}}:events") <= 86_400
        refused = await client.delete(f"{API}/{name}/events", headers=worker)
        assert refused.status_code == 403
        purged = await client.delete(f"{API}/{name}/events", headers=admin)
        assert purged.status_code == 204
        assert (await client.get(f"{API}/{name}/events", headers=admin)).status_code == 404
        again = await client.delete(f"{API}/{name}/events", headers=admin)
        assert again.status_code == 404
        assert again.json()["code"] == "unknown_process"


def test_the_retention_is_a_setting_of_at_least_a_day() -> None:
    assert Settings.from_env({}).deleted_history_seconds == 7 * 86_400
    got = Settings.from_env({"COORDINATOR_DELETED_HISTORY_SECONDS": "86400"})
    assert got.deleted_history_seconds == 86_400
    for bad in ("3600", "x", str(10**9)):
        with pytest.raises(ConfigError, match="COORDINATOR_DELETED_HISTORY_SECONDS"):
            Settings.from_env({"COORDINATOR_DELETED_HISTORY_SECONDS": bad})


def test_the_cli_purges_a_deleted_process(valkey: EmbeddedValkey, prefix: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "coordinator.cli", *args]
        command += ["--redis-url", valkey.url, "--prefix", prefix]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    assert cli("process", "register", "nightly-1").returncode == 0
    refused = cli("process", "purge", "nightly-1")
    assert refused.returncode == 1
    assert refused.stderr.startswith("coordinator: ")
    assert "delete it before purging" in refused.stderr
    assert cli("process", "delete", "nightly-1").returncode == 0
    purged = cli("process", "purge", "nightly-1")
    assert (purged.returncode, purged.stdout.strip()) == (0, "purged the history of nightly-1")
    again = cli("process", "purge", "nightly-1")
    assert again.returncode == 1
    assert "No process named 'nightly-1'" in again.stderr
