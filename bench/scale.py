"""Scale: what reading "all of something" costs at 1,000 / 10,000 / 100,000 processes.

One `coordinator serve` at its defaults (its own key prefix) on the bench's Valkey. At each
size, registered idle processes of 10 keys:

- `GET /metrics` and `GET /api/v1/process?limit=100` (one page): seconds and bytes, by curl in
  a process of its own, so the bench's event loop is not what is timed; the scrape's series
  (sample lines) and the Valkey commands it sent (INFO commandstats);
- the dashboard's first render: headless Chromium (Debian's, driven by Playwright, as
  tests/test_dashboard.py launches it) from navigation to the first process in the list, and
  the API bytes the page fetched then and in the refreshes of the next few seconds.

Processes are registered through the store's own `register` (concurrent calls, whose
scripts share one pipelined connection), in chunks.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.store import Limits, Store

SIZES = (1_000, 10_000, 100_000)
PREFIX = "bench-scale"
KEYS_PER_PROCESS = 10
REGISTER_CHUNK = 500
CHROMIUM = Path("/usr/bin/chromium")
# The flags tests/test_dashboard.py launches Chromium with (no sandbox as root, no GPU).
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE = "/api/v1/process?limit=100"


def process_name(i: int) -> str:
    """The i-th registered process (names sort in registration order)."""
    return f"scale-{i:06d}"


async def register_range(url: str, first: int, stop: int, prefix: str = PREFIX) -> float:
    """Register processes first..stop-1 through the store; seconds taken."""
    redis = connect(url, Settings())
    store = Store(redis, prefix=prefix, limits=Limits())
    started = time.perf_counter()
    try:
        for start in range(first, stop, REGISTER_CHUNK):
            names = [process_name(i) for i in range(start, min(stop, start + REGISTER_CHUNK))]
            await asyncio.gather(*(store.register(n, KEYS_PER_PROCESS) for n in names))
    finally:
        await store.aclose()
        await redis.aclose()
    return time.perf_counter() - started


@dataclass(frozen=True)
class Fetch:
    """One GET as curl saw it."""

    status: int
    seconds: float
    bytes: int
    body: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """Status, seconds and bytes."""
        return {"status": self.status, "seconds": round(self.seconds, 4), "bytes": self.bytes}


def curl_command(url: str, out: str, timeout: float) -> list[str]:
    """curl printing `status seconds bytes` for one GET of `url` into `out`."""
    return ["curl", "-s", "-o", out, "--max-time", f"{timeout:g}",
            "-w", "%{http_code} %{time_total} %{size_download}", url]  # fmt: skip


def parse_curl(output: str, body: Path | None = None) -> Fetch:
    """curl's `-w` line as a Fetch (status 0: timed out or refused)."""
    status, seconds, size = output.split()
    return Fetch(int(status), float(seconds), int(float(size)), body)


def fetch(url: str, timeout: float = 120.0, body: Path | None = None) -> Fetch:
    """GET `url` with curl (to `body`, or discarded)."""
    command = curl_command(url, str(body) if body else "/dev/null", timeout)
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    return parse_curl(done.stdout, body)


def series(body: Path) -> int:
    """Sample lines of a Prometheus text exposition."""
    with body.open("rb") as lines:
        return sum(1 for line in lines if line.strip() and not line.startswith(b"#"))


def _valkey_calls(port: int) -> int:
    async def read() -> int:
        stats = Redis(port=port)
        info: dict[str, Any] = await stats.info("commandstats")
        await stats.aclose()
        return sum(int(v["calls"]) for k, v in info.items() if k != "cmdstat_info")

    return asyncio.run(read())


def scrape(base: str, valkey_port: int, repeats: int, timeout: float) -> dict[str, Any]:
    """`repeats` scrapes: the slowest and median seconds, bytes, series, Valkey commands."""
    fetches, commands = [], []
    with tempfile.TemporaryDirectory(prefix="bpc-scrape-") as tmp:
        body = Path(tmp) / "metrics.txt"
        for _ in range(repeats):
            before = _valkey_calls(valkey_port)
            fetches.append(fetch(f"{base}/metrics", timeout, body))
            commands.append(_valkey_calls(valkey_port) - before)
        lines = series(body) if body.exists() else 0
    seconds = sorted(f.seconds for f in fetches)
    return {
        "status": fetches[-1].status,
        "seconds_median": seconds[len(seconds) // 2],
        "seconds_max": seconds[-1],
        "bytes": fetches[-1].bytes,
        "series": lines,
        "valkey_commands": max(commands),
    }


def page(base: str, repeats: int, timeout: float) -> dict[str, Any]:
    """`repeats` GETs of one process page: median and slowest seconds, bytes."""
    fetches = [fetch(base + PAGE, timeout) for _ in range(repeats)]
    seconds = sorted(f.seconds for f in fetches)
    return {
        "status": fetches[-1].status,
        "seconds_median": seconds[len(seconds) // 2],
        "seconds_max": seconds[-1],
        "bytes": fetches[-1].bytes,
    }


# Bytes of every API answer the page has fetched so far (the Resource Timing entries).
_API_BYTES = """() => performance.getEntriesByType('resource')
    .filter(e => e.name.includes('/api/'))
    .reduce((sum, e) => sum + (e.encodedBodySize || 0), 0)"""


def dashboard(base: str, timeout: float, watch: float) -> dict[str, Any]:
    """First render of the dashboard in a fresh browser: seconds to the first listed process;
    API bytes fetched by then and over the next `watch` seconds (its refreshes)."""
    from playwright.sync_api import Error, sync_playwright  # noqa: PLC0415 - heavy, bench only

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page_ = browser.new_page(viewport={"width": 1280, "height": 800})
            started = time.perf_counter()
            page_.goto(f"{base}/", wait_until="commit")
            try:
                page_.wait_for_selector("#process-list li", timeout=timeout * 1000)
            except Error:
                return {"seconds": None, "timed_out_after": timeout}
            seconds = time.perf_counter() - started
            first = int(page_.evaluate(_API_BYTES))
            page_.wait_for_timeout(watch * 1000)
            later = int(page_.evaluate(_API_BYTES)) - first
        finally:
            browser.close()
    return {
        "seconds": seconds,
        "api_bytes_first_render": first,
        "api_bytes_per_second_after": round(later / watch),
    }


async def idle_memory(url: str, count: int, prefix: str = PREFIX) -> dict[str, Any]:
    """Mean bytes of Redis memory per idle process over the first `count` processes: the sum
    of MEMORY USAGE of its own keys, and its share of the registry's two structures."""
    redis = connect(url, Settings())
    store = Store(redis, prefix=prefix, limits=Limits())
    try:
        own, largest = 0, 0
        for i in range(count):
            k = store.keys.process(process_name(i))
            async with redis.pipeline(transaction=False) as pipe:
                for field in fields(k):
                    pipe.memory_usage(getattr(k, field.name), samples=0)
                sizes = [s or 0 for s in await pipe.execute()]
            own += sum(sizes)
            largest = max(largest, sum(sizes))
        registered = int(await redis.zcard(store.keys.registry))
        shared = sum(
            [
                int(await redis.memory_usage(store.keys.registry, samples=0) or 0),
                int(await redis.memory_usage(store.keys.process_ids, samples=0) or 0),
            ]
        )
    finally:
        await store.aclose()
        await redis.aclose()
    return {
        "processes_sampled": count,
        "own_keys_bytes": own / count,
        "largest_own_keys_bytes": largest,
        "registry_share_bytes": shared / max(1, registered),
    }
