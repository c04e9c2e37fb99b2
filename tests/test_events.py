"""A process's history (one stream entry per change, in the same script) and admin revoke."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from redis.asyncio import Redis

from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from coordinator.errors import InvalidField, LeaseGone, UnknownProcess
from coordinator.models import epoch_us
from coordinator.store import Limits, Store
from tests.conftest import serve

pytestmark = pytest.mark.anyio

API = "/api/v1/process"


async def test_every_change_is_recorded_in_order(store: Store) -> None:
    await store.register("h", 2, lease_seconds=60)
    a = await store.grant("h", "m1")
    await store.renew(a.external_id or "")
    await store.release(a.external_id or "")
    b = await store.grant("h", "m2")
    await store.release(b.external_id or "", "failed")
    c = await store.grant("h", "m3")
    await store.revoke(c.external_id or "")
    await store.unregister("h")
    events = await store.events("h")
    assert [e.type for e in events] == [
        "registered", "granted", "renewed", "released-completed",
        "granted", "released-failed", "granted", "revoked", "deleted",
    ]  # fmt: skip
    granted = events[1]
    assert (granted.key, granted.machine, granted.fencing_token) == (0, "m1", a.fencing_token)
    assert granted.to_json()["external_id"] == a.external_id
    assert granted.at_us == epoch_us(a.started_at)
    ids = [e.id for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    # Paging: after an id, at most `limit`.
    assert [e.type for e in await store.events("h", events[6].id, 1)] == ["revoked"]


async def test_expiry_is_recorded_when_a_lease_is_reclaimed(store: Store, redis: Redis) -> None:
    await store.register("x", 1)
    lease = await store.grant("x", "stalled")
    # Make the lease expired now, as time passing would.
    k = store.keys.process("x")
    await redis.zadd(k.held, {"0": 1})
    record = await redis.hget(k.leases, "0")
    token, started, _expires, rest = str(record).split("|", 3)
    await redis.hset(k.leases, "0", f"{token}|{started}|1|{rest}")
    again = await store.grant("x", "next")
    types = [(e.type, e.machine) for e in await store.events("x")]
    assert types[-2:] == [("expired", "stalled"), ("granted", "next")]
    assert (again.fencing_token or 0) > (lease.fencing_token or 0)


async def test_revoke_ends_a_lease_without_completing_it(store: Store) -> None:
    await store.register("r", 3)
    held = await store.grant("r", "m")
    revoked = await store.revoke(held.external_id or "")
    assert revoked.external_id == held.external_id
    assert revoked.last_completed_at is None
    with pytest.raises(LeaseGone):
        await store.renew(held.external_id or "")
    with pytest.raises(LeaseGone):
        await store.release(held.external_id or "")
    with pytest.raises(LeaseGone):
        await store.revoke(held.external_id or "")
    keys = await store.batch_keys("r")
    assert not keys[0].held
    assert (await store.grant("r", "n")).key == 0  # keeps its place, like a failure


async def test_the_history_is_capped(redis: Redis, prefix: str) -> None:
    store = Store(redis, prefix=prefix, limits=Limits(events_cap=100))
    await store.register("c", 1)
    for _ in range(300):
        lease = await store.grant("c", "m")
        await store.release(lease.external_id or "")
    length = await redis.xlen(store.keys.process("c").events)
    assert 100 <= length < 601  # approximate trimming (MAXLEN ~) keeps at least the cap


async def test_unknown_and_malformed(store: Store) -> None:
    with pytest.raises(UnknownProcess):
        await store.events("never-registered")
    await store.register("e", 1)
    with pytest.raises(InvalidField):
        await store.grant("e", "m", lease_seconds=0)


async def test_events_and_revoke_over_http(client: httpx.AsyncClient, register) -> None:
    name = (await register(key_set_size=2))["process_name"]
    granted = (
        await client.post(f"{API}/batch_keys", json={"process_name": name, "machine": "w"})
    ).json()
    revoked = await client.post(f"{API}/batch_keys/{granted['external_id']}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["external_id"] == granted["external_id"]
    again = await client.post(f"{API}/batch_keys/{granted['external_id']}/revoke")
    assert again.status_code == 410
    unknown = await client.post(f"{API}/batch_keys/not-a-uuid/revoke")
    assert unknown.status_code == 404
    events = (await client.get(f"{API}/{name}/events")).json()
    assert [e["type"] for e in events] == ["registered", "granted", "revoked"]
    assert events[1]["external_id"] == granted["external_id"]
    assert events[1]["at"] == granted["started_at"]
    page = (
        await client.get(f"{API}/{name}/events", params={"after": events[0]["id"], "limit": 1})
    ).json()
    assert [e["type"] for e in page] == ["granted"]
    for params in ({"after": "x"}, {"limit": 0}):
        bad = await client.get(f"{API}/{name}/events", params=params)
        assert bad.status_code == 422
    assert (await client.get(f"{API}/nobody/events")).status_code == 404


async def test_revoke_needs_an_admin_token(redis: Redis, prefix: str) -> None:
    admin, admin_line = new_token("admin")
    worker, worker_line = new_token("worker")
    app = create_app(Settings(key_prefix=prefix, tokens=f"{admin_line};{worker_line}"), redis=redis)
    async with serve(app) as client:
        as_admin = {"Authorization": f"Bearer {admin}"}
        as_worker = {"Authorization": f"Bearer {worker}"}
        await client.post(API, json={"process_name": "t", "key_set_size": 1}, headers=as_admin)
        lease = (await client.post(f"{API}/batch_keys", json={"process_name": "t", "machine": "m"},
                                   headers=as_worker)).json()  # fmt: skip
        url = f"{API}/batch_keys/{lease['external_id']}/revoke"
        assert (await client.post(url, headers=as_worker)).status_code == 403
        assert (await client.post(url)).status_code == 401
        assert (await client.post(url, headers=as_admin)).status_code == 200
        events = await client.get(f"{API}/t/events", headers=as_worker)
        assert events.json()[-1]["type"] == "revoked"


def test_the_cli_prints_and_follows_events(valkey, prefix) -> None:
    cli = [sys.executable, "-m", "coordinator.cli"]
    direct = ["--redis-url", valkey.url, "--prefix", prefix]
    subprocess.run([*cli, "process", "register", "cli-ev", "--keys", "1", *direct], check=True,
                   capture_output=True, timeout=30)  # fmt: skip
    follower = subprocess.Popen([*cli, "events", "cli-ev", "--follow", "--json", *direct],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert '"type":"registered"' in first
        subprocess.run([*cli, "acquire", "cli-ev", "--machine", "late", *direct], check=True,
                       capture_output=True, timeout=30)  # fmt: skip
        followed = follower.stdout.readline()  # printed as it happens, not at exit
        assert '"type":"granted"' in followed
        assert '"machine":"late"' in followed
    finally:
        follower.terminate()
        follower.wait(10)
        if follower.stdout:
            follower.stdout.close()
    table = subprocess.run([*cli, "events", "cli-ev", *direct], capture_output=True, text=True,
                           timeout=30, check=True)  # fmt: skip
    lines = table.stdout.splitlines()
    assert "registered" in lines[0]
    assert "granted" in lines[1]
    assert "machine=late" in lines[1]
