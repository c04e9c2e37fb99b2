"""GET /metrics stays bounded however many processes exist: one read per scrape, series for a
bounded few, totals for all, figures read in the background in bounded pages, by one API
process per interval (coordinator.metrics_refresh)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as blocking
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from redis.asyncio import Redis

from coordinator import stats
from coordinator.app import create_app
from coordinator.config import ConfigError, Settings
from coordinator.embedded import EmbeddedValkey
from coordinator.keys import KeySpace
from coordinator.metrics_refresh import MetricsRefresher
from coordinator.metrics_snapshot import Snapshot, SnapshotCollector
from coordinator.store import Store
from tests.conftest import serve
from tests.test_metrics import REFRESHES, Samples, parse, value
from tests.test_serve import _env, serving

pytestmark = pytest.mark.anyio

PROCESSES = 3000
PREFIX = "bounded"
# Processes 0..11 hold 1..12 keys; the rest hold none. Sizes vary so the totals are no
# multiple of one figure.
BUSY = 12
SHOWN = 10
NAMED = "idle-02999"  # idle, last by name: only the setting gets it series


def _name(i: int) -> str:
    return f"{'busy' if i < BUSY else 'idle'}-{i:05d}"


def _size(i: int) -> int:
    return 20 + i % 7


async def _populate(url: str) -> None:
    async with Redis.from_url(url, decode_responses=True) as redis:
        store = Store(redis, prefix=PREFIX)
        # 50 at once: within the client's pool.
        for start in range(0, PROCESSES, 50):
            await asyncio.gather(
                *(store.register(_name(i), _size(i)) for i in range(start, start + 50))
            )
        for i in range(BUSY):
            for _ in range(i + 1):
                await store.grant(_name(i), "m")


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Valkey of this module's own (its commands are counted), with PROCESSES registered."""
    with EmbeddedValkey(tmp_path_factory.mktemp("bounded-valkey")) as server:
        asyncio.run(_populate(server.url))
        yield server.url


@pytest.fixture
async def redis(valkey_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(valkey_url, decode_responses=True) as client:
        yield client


def _settings(**fields: Any) -> Settings:
    return Settings(
        key_prefix=PREFIX,
        metrics_processes_max=SHOWN,
        metrics_processes=(NAMED,),
        # Long: after the first refresh, nothing else reads Redis during the test.
        metrics_refresh_seconds=3600,
        **fields,
    )


async def _commands(redis: Redis) -> dict[str, int]:
    """Calls per command since the server started (INFO's own left out)."""
    info: dict[str, Any] = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(figures["calls"])
        for name, figures in info.items()
        if name != "cmdstat_info"
    }


def _processes_shown(samples: Samples) -> set[str]:
    return {
        dict(labels)["process"]
        for name, labels in samples
        if name.startswith("coordinator_process_") and "process" in dict(labels)
    }


async def test_a_scrape_is_one_read_with_series_for_a_bounded_few(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[int] = []
    collect = SnapshotCollector.collect

    def noted(self: SnapshotCollector) -> Iterable[Metric]:
        rendered.append(self.snapshot.sequence)
        return collect(self)

    monkeypatch.setattr(SnapshotCollector, "collect", noted)
    await redis.delete(KeySpace(PREFIX).metrics_snapshot, KeySpace(PREFIX).metrics_refresher)
    async with serve(create_app(_settings(), redis=redis)) as client:
        first = await client.get("/metrics")  # starts the refresher and waits for its first
        assert first.status_code == 200
        before = await _commands(redis)
        response = await client.get("/metrics")
        after = await _commands(redis)
    # The snapshot's text was made once, for the first scrape; the second reused it.
    assert rendered == [1]
    assert response.text.endswith(first.text.partition("coordinator_metrics_refreshes")[2])
    sent = {name: after[name] - before.get(name, 0) for name in after}
    sent = {name: n for name, n in sent.items() if n}
    # Today's figures of 3,000 processes without reading any of them: one GET of the snapshot.
    assert sent == {"get": 1}, sent
    samples = parse(response.text)
    shown = _processes_shown(samples)
    # The busiest by live leases (busy-00002 .. busy-00011 hold 3 to 12), and the named one.
    assert shown == {_name(i) for i in range(BUSY - SHOWN, BUSY)} | {NAMED}
    assert value(samples, "coordinator_process_keys_held", process=_name(BUSY - 1)) == BUSY
    assert value(samples, "coordinator_process_keys_held", process=NAMED) == 0
    # Totals over every process, not only those shown.
    assert value(samples, "coordinator_processes") == PROCESSES
    assert value(samples, "coordinator_processes_key_set_size") == sum(
        _size(i) for i in range(PROCESSES)
    )
    held = BUSY * (BUSY + 1) // 2
    assert value(samples, "coordinator_processes_keys_held") == held
    assert value(samples, "coordinator_processes_keys_free") == (
        sum(_size(i) for i in range(PROCESSES)) - held
    )
    assert value(samples, "coordinator_processes_keys_never_completed") == (
        sum(_size(i) for i in range(PROCESSES)) - held
    )
    age = value(samples, "coordinator_metrics_snapshot_age_seconds")
    assert age is not None
    assert age >= 0
    assert value(samples, REFRESHES) == 1
    assert value(samples, "coordinator_store_up") == 1


async def test_a_refresh_reads_in_pages_and_yields_between_them(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    send_page = stats.send_page

    async def noted(client: Redis, commands: list[tuple[str | int, ...]]) -> list[Any]:
        writes.append(len(commands))
        return await send_page(client, commands)

    monkeypatch.setattr(stats, "send_page", noted)
    refresher = MetricsRefresher(
        redis, KeySpace(PREFIX), interval_seconds=3600, limit=SHOWN, named=(NAMED,)
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    beside = asyncio.create_task(ticker())
    try:
        before = await _commands(redis)
        snapshot = await refresher.refresh()
        after = await _commands(redis)
    finally:
        beside.cancel()
    assert snapshot.processes == PROCESSES
    assert len(snapshot.shown) == SHOWN + 1
    pages = -(-PROCESSES // stats.CHUNK)
    # One write per page of names, none longer than a page of reads...
    assert len(writes) == pages
    assert max(writes) <= stats.CHUNK * stats.READS_PER_PROCESS
    # ...and one ZRANGEBYLEX per page (and one that finds the end after a full page).
    sent = {name: after[name] - before.get(name, 0) for name in after}
    assert pages <= sent["zrangebylex"] <= pages + 1
    # Those are all the reads there are: the writes' commands, the pages of names, the last
    # snapshot read and the new one stored with the turn.
    assert sum(sent.values()) == sum(writes) + sent["zrangebylex"] + 3, sent
    # Other tasks ran between the pages: the loop was handed over at least once per page.
    assert ticks >= pages


async def test_one_refresh_per_interval_among_api_processes(redis: Redis) -> None:
    """Three refreshers sharing one Redis, all wanting a fresh snapshot, for a few intervals."""
    prefix = f"{PREFIX}-turns"
    store = Store(redis, prefix=prefix)
    await store.register("one", 3)
    interval = 0.2
    refreshers = [
        MetricsRefresher(redis, KeySpace(prefix), interval_seconds=interval, limit=SHOWN)
        for _ in range(3)
    ]
    started = time.monotonic()
    for refresher in refreshers:
        refresher.start()
        refresher.want()
    try:
        while sum(r.refreshes for r in refreshers) < 5:  # noqa: ASYNC110 - counted by their tasks
            await asyncio.sleep(interval / 4)
    finally:
        for refresher in refreshers:
            await refresher.aclose()
    elapsed = time.monotonic() - started
    made = sum(r.refreshes for r in refreshers)
    snapshot = await refreshers[0].snapshot()
    assert snapshot is not None
    assert snapshot.sequence == made
    # Each refresh waits out the turn of the one before (an interval): three processes
    # refreshing on their own would make about six per interval.
    assert made <= elapsed / interval + 1, (made, elapsed)


async def test_a_snapshot_of_another_version_or_unreadable_is_not_served(redis: Redis) -> None:
    prefix = f"{PREFIX}-versions"
    await redis.set(KeySpace(prefix).metrics_snapshot, b'{"version": 0, "sequence": 7}')
    refresher = MetricsRefresher(redis, KeySpace(prefix), interval_seconds=1, limit=1)
    assert await refresher.snapshot() is None
    await redis.set(KeySpace(prefix).metrics_snapshot, b"not json")
    assert await refresher.snapshot() is None
    await Store(redis, prefix=prefix).register("p", 2)
    stored = await refresher.refresh()
    assert Snapshot.decode(stored.encode()) == stored
    assert stored.sequence == 1  # counted afresh: the old one's count is not read


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("METRICS_PROCESSES", "a,{b}"),
        ("METRICS_PROCESSES", "a,,b"),
        ("METRICS_PROCESSES_MAX", "-1"),
        ("METRICS_REFRESH_SECONDS", "0"),
    ],
)
def test_bad_metrics_settings_are_refused(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"COORDINATOR_{variable}"):
        Settings.from_env({f"COORDINATOR_{variable}": raw})


def test_workers_of_one_serve_answer_one_snapshot(tmp_path: Path, valkey_url: str) -> None:
    """`serve --workers 2`: every scrape, whichever worker answers, gives the same figures of
    each refresh, and one refresh is made per interval, not one per worker."""
    interval = 0.5
    env = _env(
        tmp_path / "data",
        COORDINATOR_REDIS_URL=valkey_url,
        COORDINATOR_KEY_PREFIX=PREFIX,
        COORDINATOR_METRICS_PROCESSES_MAX=str(SHOWN),
        COORDINATOR_METRICS_PROCESSES=NAMED,
        COORDINATOR_METRICS_REFRESH_SECONDS=str(interval),
    )
    keys = KeySpace(PREFIX)
    with blocking.Redis.from_url(valkey_url) as direct:
        direct.delete(keys.metrics_snapshot, keys.metrics_refresher)  # other tests' long turns
    with serving(env, "--workers", "2") as served:
        found = re.search(r"summed from (\S+)", served.log)
        assert found, served.log
        directory = Path(found.group(1))
        seen: dict[float, Samples] = {}
        first: float | None = None
        started = time.monotonic()
        deadline = started + 60
        scraped: dict[str, float] = {}
        # New connections until both workers have answered a few scrapes each.
        while len([n for n in scraped.values() if n >= 3]) < 2 or len(seen) < 3:
            assert time.monotonic() < deadline, (scraped, sorted(seen))
            samples = parse(httpx.get(f"{served.base}/metrics").text)
            sequence = value(samples, REFRESHES)
            if sequence is None:
                continue
            first = sequence if first is None else first
            figures = {k: v for k, v in samples.items() if k[0].startswith("coordinator_process")}
            assert seen.setdefault(sequence, figures) == figures, sequence
            scraped = _scrapes_by_worker(directory)
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        last = max(seen)
    assert first is not None
    held = value(seen[last], "coordinator_process_keys_held", process=_name(BUSY - 1))
    assert held == BUSY
    assert value(seen[last], "coordinator_processes") == PROCESSES
    # Two workers refreshing on their own would make about two per interval.
    assert last - first <= elapsed / interval + 1, (last - first, elapsed)


def _scrapes_by_worker(directory: Path) -> dict[str, float]:
    """GET /metrics answered by each worker process, from its own counter file."""
    return {
        path.stem.removeprefix("counter_"): sum(
            s.value
            for metric in MultiProcessCollector.merge([str(path)])
            for s in metric.samples
            if s.name == "coordinator_http_requests_total" and s.labels.get("route") == "/metrics"
        )
        for path in directory.glob("counter_*.db")
    }
