"""GET /api/v1/process/{name}/progress and the clients' progress(): counts, rate, ETA and the
quarantined keys, counted as the key listing states each key (one truth), on both backends."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import fakeredis
import httpx
import pytest
from redis.asyncio import Redis

from coordinator import stats
from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.client import AsyncHttpCoordinator, AsyncRedisCoordinator
from coordinator.config import Settings
from coordinator.embedded import EmbeddedValkey
from coordinator.openapi import document
from coordinator.progress import (
    ETA_MIN_KEYS_DONE,
    QUARANTINED_SHOWN_MAX,
    RATE_WINDOW_SECONDS,
    Progress,
)
from coordinator.progress_read import read_progress
from coordinator.store import Store
from tests.conftest import FakeClock, serve

pytestmark = pytest.mark.anyio

START_US = 1_800_000_000_000_000


async def _progress(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/process/{name}/progress")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _states(client: httpx.AsyncClient, name: str) -> Counter[str]:
    response = await client.get(f"/api/v1/process/batch_keys/{name}")
    assert response.status_code == 200, response.text
    return Counter(key["state"] for key in response.json())


async def _complete(store: Store, name: str, count: int) -> None:
    for _ in range(count):
        lease = await store.grant(name, "w")
        assert lease.external_id is not None
        await store.release(lease.external_id)


def _agrees(progress: dict[str, Any], states: Counter[str]) -> None:
    """The progress object's counts are the listing's, state by state."""
    assert progress["keys_done"] == states["done"]
    assert progress["keys_quarantined"] == states["quarantined"]
    assert progress["keys_in_backoff"] == states["backoff"]
    assert progress["keys_held"] == states["held"]
    assert progress["keys_left"] == states["free"] + states["held"] + states["backoff"]
    assert progress["key_set_size"] == sum(states.values())


async def test_the_counts_are_the_key_listings_states(
    client: httpx.AsyncClient, store: Store, new_name: Callable[[], str]
) -> None:
    quarantining, backing_off = new_name(), new_name()
    await store.register(quarantining, key_set_size=8, mode="once", max_attempts=1)
    await store.register(
        backing_off, key_set_size=6, mode="once", max_attempts=5, retry_backoff_seconds=3600
    )
    for name in (quarantining, backing_off):
        await _complete(store, name, 3)
        failing = await store.grant(name, "bad-host")
        assert failing.external_id is not None
        await store.release(failing.external_id, "failed")
        await store.grant(name, "w")  # held
    states = await _states(client, quarantining)
    assert (states["done"], states["quarantined"], states["held"]) == (3, 1, 1)
    progress = await _progress(client, quarantining)
    _agrees(progress, states)
    assert progress["keys_left"] == 4
    assert progress["quarantined_total"] == 1
    assert [q["key"] for q in progress["quarantined"]] == [3]
    assert progress["quarantined"][0]["attempts"] == 1
    states = await _states(client, backing_off)
    assert (states["done"], states["backoff"], states["held"]) == (3, 1, 1)
    progress = await _progress(client, backing_off)
    _agrees(progress, states)
    # The backoff's end is read with the counts: an hour on from the failure.
    ends = datetime.fromisoformat(progress["backoff_ends_at"])
    assert 3000 < (ends - datetime.fromisoformat(progress["at"])).total_seconds() <= 3600
    assert (await _progress(client, quarantining))["backoff_ends_at"] is None


async def test_rate_and_eta_are_unknown_until_enough_keys_are_done(
    client: httpx.AsyncClient, store: Store, new_name: Callable[[], str]
) -> None:
    name = new_name()
    await store.register(name, key_set_size=ETA_MIN_KEYS_DONE + 4, mode="once")
    await _complete(store, name, ETA_MIN_KEYS_DONE - 1)
    early = await _progress(client, name)
    assert (early["rate_per_minute"], early["eta_seconds"], early["eta_at"]) == (None, None, None)
    assert early["keys_done"] == ETA_MIN_KEYS_DONE - 1
    await _complete(store, name, 1)
    known = await _progress(client, name)
    assert known["rate_per_minute"] > 0
    assert known["eta_seconds"] > 0
    assert known["keys_left"] == 4
    # The ETA is the keys left at the rate, from the moment read.
    assert known["eta_seconds"] == pytest.approx(4 / known["rate_per_minute"] * 60)
    at, eta_at = datetime.fromisoformat(known["at"]), datetime.fromisoformat(known["eta_at"])
    assert (eta_at - at).total_seconds() == pytest.approx(known["eta_seconds"], abs=1e-3)
    await _complete(store, name, 4)
    done = await _progress(client, name)
    assert done["complete"] is True
    assert (done["keys_left"], done["eta_seconds"]) == (0, 0.0)
    assert done["eta_at"] == done["pass_completed_at"]


async def test_the_quarantined_list_is_bounded(
    client: httpx.AsyncClient, store: Store, new_name: Callable[[], str]
) -> None:
    name = new_name()
    total = QUARANTINED_SHOWN_MAX + 5
    await store.register(name, key_set_size=total + 1, mode="once", max_attempts=1)
    for _ in range(total):
        lease = await store.grant(name, "host-a")
        assert lease.external_id is not None
        await store.release(lease.external_id, "failed")
    progress = await _progress(client, name)
    assert progress["quarantined_total"] == progress["keys_quarantined"] == total
    assert progress["quarantined_shown_max"] == QUARANTINED_SHOWN_MAX
    shown = progress["quarantined"]
    assert len(shown) == QUARANTINED_SHOWN_MAX
    keys = [q["key"] for q in shown]
    assert keys == sorted(set(keys))
    assert {(q["attempts"], q["machine"]) for q in shown} == {(1, "host-a")}


async def test_an_unknown_process_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/process/no-such-process/progress")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_process"


async def test_the_openapi_document_describes_the_answer(
    client: httpx.AsyncClient, store: Store, new_name: Callable[[], str]
) -> None:
    name = new_name()
    await store.register(name, key_set_size=2, mode="once", max_attempts=1)
    failing = await store.grant(name, "w")
    assert failing.external_id is not None
    await store.release(failing.external_id, "failed")
    body = await _progress(client, name)
    doc = document()
    operation = doc["paths"]["/api/v1/process/{process_name}/progress"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Progress"
    }
    schema = doc["components"]["schemas"]["Progress"]
    assert set(schema["required"]) <= set(body)
    assert set(body) <= set(schema["properties"])
    (quarantined,) = body["quarantined"]
    assert set(quarantined) == set(doc["components"]["schemas"]["QuarantinedKey"]["required"])


async def test_the_clients_read_the_same_progress(
    valkey: EmbeddedValkey, valkey_redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    name = new_name()
    store = Store(valkey_redis, prefix=prefix)
    await store.register(name, key_set_size=6, mode="once", max_attempts=1)
    await _complete(store, name, 2)
    failing = await store.grant(name, "host-b")
    assert failing.external_id is not None
    await store.release(failing.external_id, "failed")
    app = create_app(Settings(key_prefix=prefix), redis=valkey_redis)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with (
            AsyncHttpCoordinator("http://localhost", transport=transport) as http,
            AsyncRedisCoordinator(valkey.url, prefix=prefix) as direct,
        ):
            over_http, on_redis = await http.progress(name), await direct.progress(name)
    for read in (over_http, on_redis):
        assert isinstance(read, Progress)
        assert (read.keys_done, read.keys_quarantined, read.keys_left) == (2, 1, 3)
        assert [(q.key, q.attempts, q.machine) for q in read.quarantined] == [(2, 1, "host-b")]
    assert Progress.from_json(over_http.to_json()) == over_http


async def _calls(redis: Redis) -> int:
    """Commands the server has run so far (INFO commandstats), INFO itself left out."""
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def test_a_read_costs_the_same_commands_whatever_the_key_count(
    valkey_redis: Redis, prefix: str, new_name: Callable[[], str]
) -> None:
    store = Store(valkey_redis, prefix=prefix)
    sent = []
    for size in (10, 1_000_000):
        name = new_name()
        await store.register(name, key_set_size=size, mode="once", max_attempts=1)
        await _complete(store, name, 3)
        for _ in range(3):
            failing = await store.grant(name, "w")
            assert failing.external_id is not None
            await store.release(failing.external_id, "failed")
        before = await _calls(valkey_redis)
        progress = await read_progress(valkey_redis, store.keys, name)
        sent.append(await _calls(valkey_redis) - before)
        assert (progress.keys_done, progress.keys_quarantined) == (3, 3)
        assert progress.keys_left == size - 6
    # No walk over the keys: a million keys cost what ten do, a few reads in all.
    assert sent[0] == sent[1] <= 16, sent


async def test_a_worker_token_reads_the_progress_of_its_processes_only(
    valkey_redis: Redis, prefix: str
) -> None:
    admin, admin_line = new_token("admin")
    nightly, nightly_line = new_token("worker", "nightly-*")
    tokens = f"{admin_line};{nightly_line}"
    app = create_app(Settings(key_prefix=prefix, tokens=tokens), redis=valkey_redis)
    suffix = uuid.uuid4().hex[:8]
    async with serve(app) as client:
        for name in (f"nightly-{suffix}", f"payroll-{suffix}"):
            created = await client.post(
                "/api/v1/process",
                json={"process_name": name},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert created.status_code == 201, created.text

        async def status(name: str, token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = await client.get(f"/api/v1/process/{name}/progress", headers=headers)
            return response.status_code

        assert await status(f"nightly-{suffix}", nightly) == 200
        assert await status(f"payroll-{suffix}", nightly) == 403
        assert await status(f"payroll-{suffix}", admin) == 200
        assert await status(f"nightly-{suffix}", None) == 401


async def test_the_rate_counts_only_the_keys_done_in_its_window(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch, prefix: str, new_name: Callable[[], str]
) -> None:
    # TIME in the scripts and the reader's "now" (this process's clock) move together.
    monkeypatch.setattr(stats, "time", fake_clock)
    fake_clock.now = START_US / 1e6
    redis = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with redis:
        store = Store(redis, prefix=prefix)
        name = new_name()
        await store.register(name, key_set_size=20, mode="once")
        await _complete(store, name, 6)
        fake_clock.advance(RATE_WINDOW_SECONDS + 60)
        stale = await read_progress(redis, store.keys, name)
        # Six done, but none within the window: the rate is unknown again.
        assert (stale.keys_done, stale.rate_per_minute, stale.eta_seconds) == (6, None, None)
        await _complete(store, name, ETA_MIN_KEYS_DONE)
        fake_clock.advance(30)
        fresh = await read_progress(redis, store.keys, name)
    window_minutes = RATE_WINDOW_SECONDS / 60
    assert fresh.rate_per_minute == pytest.approx(ETA_MIN_KEYS_DONE / window_minutes)
    left = 20 - 6 - ETA_MIN_KEYS_DONE
    assert fresh.keys_left == left
    assert fresh.eta_seconds == pytest.approx(left / fresh.rate_per_minute * 60)
