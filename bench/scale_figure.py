"""The scale figure of `make bench`: one `coordinator serve`, processes registered up to each
size in turn, and at each size a scrape, a process page and the dashboard's first render
(bench/scale.py); memory per idle process at the first size; bystanders' renewals
(bench/bystander.py) during scrapes and a whole (unpaged) process list at the largest size,
and during a whole listing of a process of a million keys, every key touched
(bench/listing_scale.py)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench import bystander, listing_scale, scale
from bench.http_load import Server
from coordinator.embedded import EmbeddedValkey, free_port

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120.0  # seconds any one request may take before it counts as failed
DASHBOARD_TIMEOUT = 60.0
DASHBOARD_WATCH = 4.0  # the page refreshes every 2 s
SCRAPING_SECONDS = 12.0


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _used_memory(port: int) -> int:
    client = redis.Redis(port=port)
    used = int(client.info("memory")["used_memory"])
    client.close()
    return used


def serve(valkey: EmbeddedValkey, work: Path) -> Server:
    """`coordinator serve` at its defaults, on its own key prefix."""
    port = free_port()
    command = [str(ROOT / ".venv/bin/python"), "-m", "coordinator.cli", "serve", "--port",
               str(port)]  # fmt: skip
    env = {
        **os.environ,
        "COORDINATOR_REDIS_URL": valkey.url,
        "COORDINATOR_KEY_PREFIX": scale.PREFIX,
    }
    return Server(command, env, port, work / "scale.log")


def at_size(base: str, valkey_port: int, repeats: int) -> dict[str, Any]:
    """Scrape, one page and the dashboard at the processes registered now."""
    return {
        "metrics": scale.scrape(base, valkey_port, repeats, TIMEOUT),
        "page": scale.page(base, repeats, TIMEOUT),
        "dashboard": scale.dashboard(base, DASHBOARD_TIMEOUT, DASHBOARD_WATCH),
    }


def scale_figure(
    valkey: EmbeddedValkey,
    *,
    sizes: tuple[int, ...],
    repeats: int,
    listing_keys: int,
    listing_repeats: int,
    work: Path,
) -> dict[str, Any]:
    """Every scale measurement on one server; see the module's docstring."""
    out: dict[str, Any] = {"sizes": {}, "keys_per_process": scale.KEYS_PER_PROCESS}
    with serve(valkey, work) as server:
        registered = 0
        for size in sizes:
            before = _used_memory(valkey.port)
            seconds = asyncio.run(scale.register_range(valkey.url, registered, size))
            grown = _used_memory(valkey.port) - before
            _log(f"scale: registered {size - registered:,} processes in {seconds:.1f} s")
            if registered == 0:
                out["memory"] = {
                    **asyncio.run(scale.idle_memory(valkey.url, min(size, 200))),
                    "used_memory_per_process": grown / size,
                }
            registered = size
            figures = at_size(server.url, valkey.port, repeats)
            out["sizes"][str(size)] = {"register_seconds": seconds, **figures}
            _log(
                f"scale {size:,}: /metrics {figures['metrics']['seconds_median']:.3f} s"
                f" {figures['metrics']['bytes']:,} B; page {figures['page']['seconds_median']:.3f}"
                f" s {figures['page']['bytes']:,} B; dashboard {figures['dashboard']['seconds']}"
            )
        out["largest"] = registered
        # Scraping outlasts one background refresh of the figures (every 10 s by default), so
        # a refresh of every process runs among the renewals too.
        out["bystanders_scrape"] = asyncio.run(
            bystander.during(
                server.url,
                f"{server.url}/metrics",
                repeats=3,
                limit_seconds=TIMEOUT,
                busy=SCRAPING_SECONDS,
            )
        )
        _log(f"scale: renewal p99 during a scrape {out['bystanders_scrape']['p99_ms']:.1f} ms")
        out["bystanders_process_list"] = asyncio.run(
            listing_scale.process_list_bystanders(server.url, repeats=1, limit_seconds=TIMEOUT)
        )
        _log(
            "scale: renewal p99 during a whole process list"
            f" {out['bystanders_process_list']['p99_ms']:.1f} ms"
        )
        out["bystanders_listing"] = asyncio.run(
            listing_scale.listing_bystanders(
                server.url,
                valkey.url,
                keys=listing_keys,
                repeats=listing_repeats,
                limit_seconds=TIMEOUT,
                prefix=scale.PREFIX,
            )
        )
        out["listing_keys"] = listing_keys
        _log(f"scale: renewal p99 during a listing {out['bystanders_listing']['p99_ms']:.1f} ms")
    return out
