"""Bystanders: other clients' renewals while one client reads "all of something".

`BYSTANDERS` clients each hold a lease of a small process of their own and renew it over HTTP
every `PAUSE` seconds, each renewal timed. The heavy request (a scrape, a whole key listing)
runs in curl, a process of its own, so only the server's delays show in the renewals; heavy
requests follow one another for a few seconds at least; the figure is the renewals' p99 among
those sent while one ran, beside the same clients' p99 just before.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.scale import Fetch, curl_command, parse_curl

BYSTANDERS = 8
PAUSE = 0.01
PROCESS = "bench-bystanders"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)]


@dataclass
class Renewals:
    """(sent at, milliseconds) of every renewal; errors counted apart."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0

    def between(self, start: float, end: float) -> list[float]:
        """Milliseconds of the renewals sent in [start, end]."""
        return [ms for sent, ms in self.samples if start <= sent <= end]


async def _renewer(client: httpx.AsyncClient, stop: asyncio.Event, out: Renewals) -> None:
    answer = await client.post(
        "/api/v1/process/batch_keys", json={"process_name": PROCESS, "machine": "bystander"}
    )
    answer.raise_for_status()
    lease = f"/api/v1/process/batch_keys/{answer.json()['external_id']}"
    while not stop.is_set():
        sent = time.perf_counter()
        try:
            renewed = await client.patch(lease, json={})
            ok = renewed.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            out.samples.append((sent, (time.perf_counter() - sent) * 1000))
        else:
            out.errors += 1
        await asyncio.sleep(PAUSE)
    await client.delete(lease)


async def _heavy(url: str, limit_seconds: float) -> tuple[float, float, Fetch]:
    command = curl_command(url, "/dev/null", limit_seconds)
    start = time.perf_counter()
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    output, _ = await child.communicate()
    return start, time.perf_counter(), parse_curl(output.decode())


async def during(
    base: str,
    heavy_url: str,
    *,
    repeats: int,
    limit_seconds: float,
    quiet: float = 2.0,
    busy: float = 3.0,
) -> dict[str, Any]:
    """Bystanders' renewal latency `quiet` seconds before, then during GETs of `heavy_url`
    one after another (each given `limit_seconds`): `repeats` of them, and more until `busy`
    seconds have passed, so a fast one still meets enough renewals to take a p99 of."""
    stop, renewals = asyncio.Event(), Renewals()
    # One connection per bystander, as separate workers have.
    async with httpx.AsyncClient(base_url=base, timeout=30) as setup:
        registered = await setup.post(
            "/api/v1/process", json={"process_name": PROCESS, "key_set_size": 2 * BYSTANDERS}
        )
        if registered.status_code not in (201, 409):  # 409: an earlier call registered it
            registered.raise_for_status()
    clients = [httpx.AsyncClient(base_url=base, timeout=30) for _ in range(BYSTANDERS)]
    tasks = [asyncio.create_task(_renewer(c, stop, renewals)) for c in clients]
    try:
        await asyncio.sleep(0.5)  # every bystander holds its lease
        quiet_from = time.perf_counter()
        await asyncio.sleep(quiet)
        quiet_to = time.perf_counter()
        heavy = [await _heavy(heavy_url, limit_seconds) for _ in range(repeats)]
        while heavy[-1][1] - heavy[0][0] < busy:
            heavy.append(await _heavy(heavy_url, limit_seconds))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for client in clients:
            await client.aclose()
    before = renewals.between(quiet_from, quiet_to)
    loaded = [ms for start, end, _ in heavy for ms in renewals.between(start, end)]
    return {
        "heavy": [f.to_json() for _, _, f in heavy[:repeats]],
        "heavy_requests": len(heavy),
        "heavy_failed": sum(1 for _, _, f in heavy if f.status != 200),
        "renewals_during": len(loaded),
        "p50_ms": percentile(loaded, 50),
        "p99_ms": percentile(loaded, 99),
        "max_ms": max(loaded, default=math.nan),
        "quiet_p99_ms": percentile(before, 99),
        "renewal_errors": renewals.errors,
    }
