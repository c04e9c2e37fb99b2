"""GET /metrics: request and operation counters, per-process gauges, access, several workers.

The per-process gauges come from a snapshot refreshed in the background (every 50 ms here):
`fresh` scrapes until the figures were read after the test's last change."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import fakeredis
import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette

from coordinator import stats
from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from coordinator.embedded import free_port
from coordinator.store import Store
from tests.conftest import FakeClock, Register, serve
from tests.test_serve import _env, serving

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
KEYS = f"{API}/batch_keys"
LEASE = KEYS + "/{external_id}"
WORKER, WORKER_LINE = new_token("worker")
LIMITED, LIMITED_LINE = new_token("worker", "seen-*")
OUTSIDE = ("203.0.113.5", 1234)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# The snapshot's refresh interval in these tests, so a fresh one is never far off.
REFRESH_SECONDS = 0.05
REFRESHES = "coordinator_metrics_refreshes_total"


def _settings(prefix: str, **fields: Any) -> Settings:
    return Settings(key_prefix=prefix, metrics_refresh_seconds=REFRESH_SECONDS, **fields)


@pytest.fixture
async def client(redis: Redis, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app on either backend (as conftest's), refreshing its snapshot every 50 ms."""
    async with serve(create_app(_settings(prefix), redis=redis)) as http:
        yield http


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(client: httpx.AsyncClient, **kwargs: Any) -> Samples:
    response = await client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


@asynccontextmanager
async def serve_from(
    app: Starlette, client: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[httpx.AsyncClient]:
    """Like conftest.serve, with the client address chosen."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state, client=client, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http


async def fresh(client: httpx.AsyncClient, **kwargs: Any) -> Samples:
    """A scrape of a snapshot begun after this call: two refreshes on (the first may have been
    under way already)."""
    wanted = (value(await scrape(client, **kwargs), REFRESHES) or 0) + 2
    with anyio.fail_after(30):
        while True:
            samples = await scrape(client, **kwargs)
            if (value(samples, REFRESHES) or 0) >= wanted:
                return samples
            await anyio.sleep(REFRESH_SECONDS / 2)  # the refresher is in another app's task


async def _grant(client: httpx.AsyncClient, name: str, **fields: Any) -> httpx.Response:
    return await client.post(KEYS, json={"process_name": name, "machine": "m", **fields})


# --- counters and the latency histogram ---------------------------------------------------


async def test_requests_and_operations_are_counted(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=2))["process_name"]
    first = (await _grant(client, name)).json()
    second = (await _grant(client, name)).json()
    assert (await _grant(client, name)).status_code == 409
    assert (await _grant(client, "never-registered")).status_code == 404
    assert (await client.patch(f"{KEYS}/{first['external_id']}", json={})).status_code == 200
    assert (await client.delete(f"{KEYS}/{first['external_id']}")).status_code == 200
    done = await client.delete(f"{KEYS}/{second['external_id']}?outcome=failed")
    assert done.status_code == 200
    assert (await client.delete(f"{KEYS}/{first['external_id']}")).status_code == 410
    assert (await client.get(f"{KEYS}/{name}")).status_code == 200
    assert (await client.get(f"/nowhere/{first['external_id']}")).status_code == 404
    assert (await client.request("BREW", "/healthz")).status_code == 405

    samples = await scrape(client)

    def requests(method: str, route: str, status: int) -> float | None:
        return value(
            samples, "coordinator_http_requests_total", method=method, route=route,
            status=str(status),
        )  # fmt: skip

    assert requests("POST", API, 201) == 1
    assert requests("POST", KEYS, 201) == 2
    assert requests("POST", KEYS, 409) == 1
    assert requests("POST", KEYS, 404) == 1
    assert requests("PATCH", LEASE, 200) == 1
    assert requests("DELETE", LEASE, 200) == 2
    assert requests("DELETE", LEASE, 410) == 1
    # Routes by template: process names and lease ids are no request labels.
    assert requests("GET", KEYS + "/{process_name}", 200) == 1
    assert requests("GET", "unmatched", 404) == 1
    assert requests("other", "/healthz", 405) == 1
    label_values = {
        v for n, labels in samples if not n.startswith("coordinator_process_") for _, v in labels
    }
    assert name not in label_values
    assert not any(first["external_id"] in v for v in label_values)

    assert value(samples, "coordinator_grants_total", outcome="granted") == 2
    assert value(samples, "coordinator_grants_total", outcome="no_free_key") == 1
    assert value(samples, "coordinator_grants_total", outcome="unknown_process") == 1
    assert value(samples, "coordinator_no_free_key_total") == 1
    assert value(samples, "coordinator_renewals_total", outcome="renewed") == 1
    assert value(samples, "coordinator_renewals_total", outcome="lease_gone") == 0
    assert value(samples, "coordinator_releases_total", outcome="completed") == 1
    assert value(samples, "coordinator_releases_total", outcome="failed") == 1
    assert value(samples, "coordinator_releases_total", outcome="lease_gone") == 1

    # The histogram: cumulative buckets ending in +Inf == count, and a positive sum.
    histogram = "coordinator_http_request_duration_seconds"
    labels = {"method": "POST", "route": KEYS, "status": "201"}
    assert value(samples, f"{histogram}_count", **labels) == 2
    sum_ = value(samples, f"{histogram}_sum", **labels)
    assert sum_ is not None
    assert 0 < sum_ < 10
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in samples.items()
        if n == f"{histogram}_bucket" and set(labels.items()) <= ls
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert buckets[-1] == (float("inf"), 2)
    assert [le for le, _ in buckets][-2] == 60

    # The scrape itself is counted, by the next one.
    again = await scrape(client)
    assert value(again, "coordinator_http_requests_total", method="GET", route="/metrics",
                 status="200") == 1  # fmt: skip


async def test_an_unexpected_error_is_counted_as_500(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Store, "grant", broken)
    async with serve_from(create_app(Settings(key_prefix=prefix), redis=redis)) as client:
        assert (await _grant(client, "anything")).status_code == 500
        samples = await scrape(client)
    assert value(samples, "coordinator_grants_total", outcome="error") == 1
    assert (
        value(samples, "coordinator_http_requests_total", method="POST", route=KEYS, status="500")
        == 1
    )


# --- per-process gauges, from the snapshot ---------------------------------------------------


def _gauges(samples: Samples, name: str) -> dict[str, float | None]:
    return {
        suffix: value(samples, f"coordinator_process_{suffix}", process=name)
        for suffix in (
            "key_set_size",
            "keys_held",
            "keys_free",
            "keys_never_completed",
            "leases_expired_unreclaimed",
            "stalest_completion_age_seconds",
        )
    }


async def test_process_gauges_follow_grants_and_releases(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=5))["process_name"]
    empty = (await register(key_set_size=3))["process_name"]
    before = await fresh(client)
    assert value(before, "coordinator_store_up") == 1
    assert _gauges(before, name) == {
        "key_set_size": 5,
        "keys_held": 0,
        "keys_free": 5,
        "keys_never_completed": 5,
        "leases_expired_unreclaimed": 0,
        "stalest_completion_age_seconds": None,  # nothing completed yet
    }
    ids = [(await _grant(client, name)).json()["external_id"] for _ in range(3)]
    assert (await client.delete(f"{KEYS}/{ids[0]}?outcome=completed")).status_code == 200
    assert (await client.delete(f"{KEYS}/{ids[1]}?outcome=failed")).status_code == 200

    samples = await fresh(client)
    gauges = _gauges(samples, name)
    age = gauges.pop("stalest_completion_age_seconds")
    assert gauges == {
        "key_set_size": 5,
        "keys_held": 1,
        "keys_free": 4,
        # key 1 failed and keys 3, 4 were never handed out; key 0 completed.
        "keys_never_completed": 3,
        "leases_expired_unreclaimed": 0,
    }
    assert age is not None
    assert 0 <= age < 5
    assert _gauges(samples, empty)["keys_free"] == 3
    assert value(samples, "coordinator_processes") == 2
    # The listing agrees with the gauges.
    listed = (await client.get(f"{KEYS}/{name}")).json()
    assert sum(k["expires_at"] is not None for k in listed) == gauges["keys_held"]


@pytest.fixture
async def clocked(
    prefix: str, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on fakeredis, with Redis's clock and the stats' clock both `fake_clock`."""
    monkeypatch.setattr(stats, "time", fake_clock)
    server = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with server, serve_from(create_app(_settings(prefix), redis=server)) as http:
        yield http


async def test_stalest_age_and_unreclaimed_expiries(
    clocked: httpx.AsyncClient, fake_clock: FakeClock
) -> None:
    client = clocked
    await client.post(API, json={"process_name": "aging", "key_set_size": 4})
    for _ in range(2):
        lease = (await _grant(client, "aging")).json()
        assert (await client.delete(f"{KEYS}/{lease['external_id']}")).status_code == 200
        fake_clock.advance(100)
    # Keys 0 and 1 completed 200 s and 100 s ago; the stalest is key 0.
    gauges = _gauges(await fresh(client), "aging")
    assert gauges["stalest_completion_age_seconds"] == pytest.approx(200, abs=0.01)
    assert gauges["keys_never_completed"] == 2

    abandoned = [(await _grant(client, "aging", lease_seconds=10)).json() for _ in range(2)]
    assert [a["key"] for a in abandoned] == [2, 3]
    fake_clock.advance(11)
    gauges = _gauges(await fresh(client), "aging")
    assert gauges["leases_expired_unreclaimed"] == 2
    assert gauges["keys_held"] == 0
    assert gauges["keys_free"] == 4
    before = value(await scrape(client), "coordinator_expiries_reclaimed_total")
    # The next grant returns both to the free set (and takes one of them).
    assert (await _grant(client, "aging")).status_code == 201
    samples = await fresh(client)
    assert value(samples, "coordinator_expiries_reclaimed_total") == (before or 0) + 2
    gauges = _gauges(samples, "aging")
    assert gauges["leases_expired_unreclaimed"] == 0
    assert gauges["keys_held"] == 1
    assert gauges["keys_free"] == 3


async def test_redis_down_still_serves_the_counters(prefix: str) -> None:
    redis = Redis(
        port=free_port(),
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    async with redis, serve_from(create_app(Settings(key_prefix=prefix), redis=redis)) as client:
        assert (await _grant(client, "p")).status_code == 503
        samples = await scrape(client)
    assert value(samples, "coordinator_store_up") == 0
    assert value(samples, "coordinator_grants_total", outcome="store_unavailable") == 1
    assert not any(n.startswith("coordinator_process_") for n, _ in samples)


# --- who may scrape -----------------------------------------------------------------------


async def test_outside_clients_without_tokens_configured_are_refused(
    redis: Redis, prefix: str
) -> None:
    app = create_app(Settings(key_prefix=prefix), redis=redis)
    async with serve_from(app, client=OUTSIDE) as client:
        response = await client.get("/metrics", headers={"Authorization": f"Bearer {WORKER}"})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "forbidden"


def _guarded(redis: Redis, prefix: str) -> Starlette:
    tokens = f"{WORKER_LINE};{LIMITED_LINE}"
    return create_app(_settings(prefix, tokens=tokens), redis=redis)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {WORKER}"],
    # Named, not shown: the token is new each run, and parallel runs must collect alike.
    ids=["none", "wrong-token", "basic-scheme"],
)
async def test_outside_clients_need_a_valid_token(
    redis: Redis, prefix: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with serve_from(_guarded(redis, prefix), client=OUTSIDE) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_loopback_while_open_or_a_token_may_scrape(redis: Redis, prefix: str) -> None:
    store = Store(redis, prefix=prefix)
    await store.register("seen-1", 2)
    await store.register("hidden-1", 3)
    open_app = create_app(_settings(prefix), redis=redis)
    shown: dict[str, set[str]] = {}
    totals: dict[str, float | None] = {}
    for who, app, client_address, token in [
        ("loopback", open_app, ("127.0.0.1", 5000), None),
        ("loopback v6", open_app, ("::1", 5000), None),
        ("worker", _guarded(redis, prefix), OUTSIDE, WORKER),
        ("limited", _guarded(redis, prefix), ("127.0.0.1", 5000), LIMITED),
    ]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with serve_from(app, client=client_address) as client:
            samples = await fresh(client, headers=headers)
        assert value(samples, "coordinator_grants_total", outcome="granted") == 0
        shown[who] = {
            dict(labels)["process"]
            for n, labels in samples
            if n == "coordinator_process_key_set_size"
        }
        totals[who] = value(samples, "coordinator_processes_key_set_size")
    assert shown["loopback"] == shown["loopback v6"] == shown["worker"] == {"seen-1", "hidden-1"}
    assert totals["loopback"] == totals["worker"] == 5
    # A token limited to some processes sees only their figures, from loopback too, and no
    # totals (they would count the others).
    assert shown["limited"] == {"seen-1"}
    assert totals["limited"] is None


async def test_loopback_needs_a_token_once_tokens_are_configured(redis: Redis, prefix: str) -> None:
    async with serve_from(_guarded(redis, prefix), client=("127.0.0.1", 5000)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


# --- several workers ------------------------------------------------------------------------


def _worker_counts(directory: Path) -> dict[str, float]:
    """Grants counted by each worker process, read from its own file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        counts[pid] = sum(
            s.value
            for metric in MultiProcessCollector.merge([str(path)])
            for s in metric.samples
            if s.name == "coordinator_grants_total" and s.labels == {"outcome": "granted"}
        )
    return counts


def _fresh_from(base: str) -> Samples:
    """`fresh`, over HTTP to a served API."""
    wanted = (value(parse(httpx.get(f"{base}/metrics").text), REFRESHES) or 0) + 2
    deadline = time.monotonic() + 30
    while (value(samples := parse(httpx.get(f"{base}/metrics").text), REFRESHES) or 0) < wanted:
        assert time.monotonic() < deadline, samples
        time.sleep(REFRESH_SECONDS)
    return samples


def test_several_workers_count_each_request_once(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", COORDINATOR_METRICS_REFRESH_SECONDS="0.2")
    with serving(env, "--workers", "2") as served:
        found = re.search(r"summed from (\S+)", served.log)
        assert found, served.log
        directory = Path(found.group(1))
        assert directory.is_dir()
        base = served.base
        created = httpx.post(f"{base}{API}", json={"process_name": "spread", "key_set_size": 1000})
        assert created.status_code == 201
        sent = 0
        deadline = time.monotonic() + 30
        # A new connection per request, until both workers have answered some.
        while sent < 40 or len([c for c in _worker_counts(directory).values() if c]) < 2:
            assert time.monotonic() < deadline, _worker_counts(directory)
            response = httpx.post(f"{base}{KEYS}", json={"process_name": "spread", "machine": "m"})
            assert response.status_code == 201
            sent += 1
        per_worker = _worker_counts(directory)
        assert len(per_worker) == 2
        assert sum(per_worker.values()) == sent
        _fresh_from(base)
        # Every scrape, whichever worker answers it, counts each request exactly once.
        for _ in range(6):
            samples = parse(httpx.get(f"{base}/metrics").text)
            assert value(samples, "coordinator_grants_total", outcome="granted") == sent
            assert (
                value(samples, "coordinator_http_requests_total", method="POST", route=KEYS,
                      status="201") == sent
            )  # fmt: skip
            assert (
                value(samples, "coordinator_http_request_duration_seconds_count", method="POST",
                      route=KEYS, status="201") == sent
            )  # fmt: skip
            # One snapshot read from Redis, whichever worker answers: not multiplied by them.
            assert value(samples, "coordinator_process_keys_held", process="spread") == sent
            assert value(samples, "coordinator_processes") == 1
    assert served.process.returncode == 0
    assert not directory.exists()


async def test_batch_run_gauges_follow_the_pass(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=3, mode="once", max_attempts=1, retry_backoff_seconds=0))[
        "process_name"
    ]
    backing_off = (await register(key_set_size=1, retry_backoff_seconds=3600))["process_name"]

    def batch(samples: Samples, process: str) -> dict[str, float | None]:
        return {
            suffix: value(samples, f"coordinator_process_{suffix}", process=process)
            for suffix in ("pass", "keys_done", "keys_quarantined", "keys_in_backoff")
        }

    before = await fresh(client)
    assert batch(before, name) == {
        "pass": 1,
        "keys_done": 0,
        "keys_quarantined": 0,
        "keys_in_backoff": 0,
    }
    ids = [(await _grant(client, name)).json()["external_id"] for _ in range(3)]
    assert (await client.delete(f"{KEYS}/{ids[0]}?outcome=completed")).status_code == 200
    assert (await client.delete(f"{KEYS}/{ids[1]}?outcome=failed")).status_code == 200
    failed = (await _grant(client, backing_off)).json()["external_id"]
    assert (await client.delete(f"{KEYS}/{failed}?outcome=failed")).status_code == 200
    samples = await fresh(client)
    assert batch(samples, name) == {
        "pass": 1,
        "keys_done": 1,
        "keys_quarantined": 1,
        "keys_in_backoff": 0,
    }
    assert batch(samples, backing_off)["keys_in_backoff"] == 1
    # The last key done completes the once pass; a new pass starts from nothing.
    assert (await client.delete(f"{KEYS}/{ids[2]}?outcome=completed")).status_code == 200
    assert (await client.post(f"/api/v1/process/{name}/passes")).status_code == 201
    assert batch(await fresh(client), name) == {
        "pass": 2,
        "keys_done": 0,
        "keys_quarantined": 0,
        "keys_in_backoff": 0,
    }


async def test_a_grants_409s_are_told_apart(client: httpx.AsyncClient, register: Register) -> None:
    """A complete `once` pass and an all-quarantined process are no shortage of keys: their 409s
    count as their own outcomes, not as `no_free_key` (which alerts watch)."""
    done = (await register(key_set_size=1, mode="once"))["process_name"]
    poisoned = (await register(key_set_size=1, max_attempts=1, retry_backoff_seconds=0))[
        "process_name"
    ]
    lease = (await _grant(client, done)).json()["external_id"]
    assert (await client.delete(f"{KEYS}/{lease}")).status_code == 200
    lease = (await _grant(client, poisoned)).json()["external_id"]
    assert (await client.delete(f"{KEYS}/{lease}?outcome=failed")).status_code == 200
    for name, code in ((done, "pass_complete"), (poisoned, "all_quarantined")):
        refused = await _grant(client, name)
        assert (refused.status_code, refused.json()["code"]) == (409, code)

    samples = await scrape(client)
    assert value(samples, "coordinator_grants_total", outcome="pass_complete") == 1
    assert value(samples, "coordinator_grants_total", outcome="all_quarantined") == 1
    assert value(samples, "coordinator_grants_total", outcome="no_free_key") == 0
    assert value(samples, "coordinator_no_free_key_total") == 0


async def test_pass_start_and_completion_gauges_follow_the_pass(
    client: httpx.AsyncClient, register: Register
) -> None:
    """The pass's start is the API's started_at; completion flips its gauge; a new pass moves
    the start; the oldest incomplete start over every process skips a complete pass."""
    name = (await register(key_set_size=1, mode="once"))["process_name"]
    other = (await register(key_set_size=1))["process_name"]
    started = "coordinator_process_pass_started_timestamp_seconds"
    complete = "coordinator_process_pass_complete"
    oldest = "coordinator_processes_oldest_incomplete_pass_started_timestamp_seconds"

    async def started_at(process: str, number: int) -> float:
        found = await client.get(f"{API}/{process}/passes/{number}")
        assert found.status_code == 200, found.text
        moment = found.json()["started_at"].replace("Z", "+00:00")
        return datetime.fromisoformat(moment).timestamp()

    first = await started_at(name, 1)
    samples = await fresh(client)
    assert value(samples, started, process=name) == pytest.approx(first, abs=1e-3)
    assert value(samples, complete, process=name) == 0
    assert value(samples, "coordinator_processes_pass_complete") == 0
    # Both passes are incomplete: the once process's, registered first, is the oldest.
    assert value(samples, oldest) == pytest.approx(first, abs=1e-3)

    lease = (await _grant(client, name)).json()["external_id"]
    assert (await client.delete(f"{KEYS}/{lease}?outcome=completed")).status_code == 200
    samples = await fresh(client)
    assert value(samples, complete, process=name) == 1
    assert value(samples, started, process=name) == pytest.approx(first, abs=1e-3)
    assert value(samples, "coordinator_processes_pass_complete") == 1
    # A complete pass is overdue no more: the oldest incomplete one is the other process's.
    assert value(samples, oldest) == pytest.approx(await started_at(other, 1), abs=1e-3)

    assert (await client.post(f"{API}/{name}/passes")).status_code == 201
    second = await started_at(name, 2)
    samples = await fresh(client)
    assert second > first + REFRESH_SECONDS  # two refreshes came between them
    assert value(samples, started, process=name) == pytest.approx(second, abs=1e-3)
    assert value(samples, complete, process=name) == 0
