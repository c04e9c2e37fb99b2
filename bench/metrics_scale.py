"""/metrics at scale: a scrape's cost, and other clients' renewals meanwhile, at N processes.

    .venv/bin/python -m bench.metrics_scale 100000 [--refresh-seconds 1]

One private Valkey and one `coordinator serve` at its defaults (but the snapshot's refresh
interval, kept short so background refreshes run throughout), `processes` idle processes of
10 keys registered through the store (bench/scale.register_range). Once a first scrape has
figures (for the snapshot: its first refresh; a server that reads when scraped has them at
once):

- a scrape's seconds, bytes, series and the Valkey commands it sent (bench/scale.scrape, curl
  in a process of its own);
- the last background refresh's seconds, from coordinator_metrics_refresh_duration_seconds
  (absent on a server that reads when scraped);
- bystanders' renewal p50/p99/max before and during scrapes back to back
  (bench/bystander.during).

`refresh_holds` times one background refresh in this process instead, with the longest hold
of its event loop (`--holds`).

The server is started from a folder of its own with the caller's PYTHONPATH, so pointing that
at another checkout's `coordinator` measures that code (before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from bench import bystander, scale
from coordinator.embedded import EmbeddedValkey, free_port

TIMEOUT = 120.0  # seconds a scrape may take before it counts as failed
READY_SECONDS = 60.0


def _gauge(text: str, name: str) -> float | None:
    """The value of an unlabelled sample in a text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _serve(valkey: EmbeddedValkey, work: Path, refresh_seconds: float) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {
        **os.environ,
        "COORDINATOR_REDIS_URL": valkey.url,
        "COORDINATOR_KEY_PREFIX": scale.PREFIX,
        "COORDINATOR_DATA_DIR": str(work / "data"),
        "COORDINATOR_METRICS_REFRESH_SECONDS": str(refresh_seconds),
        "COORDINATOR_LOG_LEVEL": "warning",
    }
    log = (work / "serve.log").open("wb")
    command = [sys.executable, "-m", "coordinator.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, cwd=work, stdout=log, stderr=log)  # noqa: S603
    process.port = port  # type: ignore[attr-defined]  # carried beside the handle
    return process


def _first_figures(base: str) -> str:
    """Scrape until the per-process figures are there; the last exposition."""
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            text = httpx.get(f"{base}/metrics", timeout=TIMEOUT).text
        except httpx.TransportError:
            text = ""
        if _gauge(text, "coordinator_processes") is not None:
            return text
        if time.monotonic() > deadline:
            raise RuntimeError(f"no per-process figures from {base}/metrics")
        time.sleep(0.2)


def measure(
    processes: int, *, refresh_seconds: float = 1.0, repeats: int = 3, work: Path | None = None
) -> dict[str, Any]:
    """A scrape's cost and bystanders' renewals during scrapes, at `processes` processes."""
    with tempfile.TemporaryDirectory(prefix="bpc-metrics-scale-") as tmp:
        folder = work or Path(tmp)
        with EmbeddedValkey(folder / "valkey") as valkey:
            registered = asyncio.run(scale.register_range(valkey.url, 0, processes))
            server = _serve(valkey, folder, refresh_seconds)
            base = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
            try:
                deadline = time.monotonic() + READY_SECONDS
                while True:
                    try:
                        if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError((folder / "serve.log").read_text())
                    time.sleep(0.1)
                started = time.monotonic()
                text = _first_figures(base)
                first_seconds = time.monotonic() - started
                scraped = scale.scrape(base, valkey.port, repeats, TIMEOUT)
                text = httpx.get(f"{base}/metrics", timeout=TIMEOUT).text
                renewals = asyncio.run(
                    bystander.during(
                        base, f"{base}/metrics", repeats=repeats, limit_seconds=TIMEOUT
                    )
                )
            finally:
                server.terminate()
                server.wait(30)
    return {
        "processes": processes,
        "register_seconds": round(registered, 1),
        "first_figures_seconds": round(first_seconds, 3),
        "scrape": scraped,
        "refresh_seconds": _gauge(text, "coordinator_metrics_refresh_duration_seconds"),
        "snapshot_age_seconds": _gauge(text, "coordinator_metrics_snapshot_age_seconds"),
        "bystanders": renewals,
    }


async def _refresh_holds(url: str, processes: int) -> dict[str, Any]:
    from coordinator.cli.serve import settle_gc  # noqa: PLC0415 - the snapshot's code only
    from coordinator.keys import KeySpace  # noqa: PLC0415
    from coordinator.metrics_refresh import MetricsRefresher  # noqa: PLC0415

    settle_gc()  # as `serve` readies each API process
    async with Redis.from_url(url, decode_responses=True) as redis:
        refresher = MetricsRefresher(redis, KeySpace(scale.PREFIX), interval_seconds=10, limit=100)
        holds: list[tuple[float, float]] = []  # (wall, this thread's CPU) seconds between turns
        stop = False

        async def ticker() -> None:
            wall, cpu = time.perf_counter(), time.thread_time()
            while not stop:
                await asyncio.sleep(0)
                now, used = time.perf_counter(), time.thread_time()
                holds.append((now - wall, used - cpu))
                wall, cpu = now, used

        beside = asyncio.create_task(ticker())
        started = time.perf_counter()
        snapshot = await refresher.refresh()
        seconds = time.perf_counter() - started
        stop = True
        await beside
    return {
        "processes": snapshot.processes,
        "refresh_seconds": round(seconds, 3),
        "loop_turns": len(holds),
        "cpu_hold_max_ms": round(max(c for _, c in holds) * 1000, 2),
        "wall_hold_max_ms": round(max(w for w, _ in holds) * 1000, 2),
    }


def refresh_holds(processes: int) -> dict[str, Any]:
    """One background refresh at `processes` processes, in this process (its garbage collector
    set as `serve` sets it): its seconds, and the longest the event loop went without another
    task's turn, in CPU (this thread's: the refresh's own work and collections) and in wall
    time (the machine's other load included)."""
    with (
        tempfile.TemporaryDirectory(prefix="bpc-metrics-holds-") as tmp,
        EmbeddedValkey(Path(tmp)) as valkey,
    ):
        asyncio.run(scale.register_range(valkey.url, 0, processes))
        return asyncio.run(_refresh_holds(valkey.url, processes))


def main() -> None:
    """Print `measure`'s figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("processes", type=int)
    parser.add_argument("--refresh-seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--holds", action="store_true", help="time one refresh in this process (refresh_holds)"
    )
    args = parser.parse_args()
    if args.holds:
        figures = refresh_holds(args.processes)
    else:
        figures = measure(
            args.processes, refresh_seconds=args.refresh_seconds, repeats=args.repeats
        )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
