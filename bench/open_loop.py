"""Open-loop latency: grants offered at a constant rate, spread evenly in time, as a fleet of
workers asking now and then would send them (not a closed loop that waits for each answer
before asking again, nor a generator that fires in synchronized bursts).

Grant i is due at start + i / rate. A connection that is free at that moment sends it at once;
if all are busy, it goes out on the first to come free, and its latency still counts from when
it was due, so a server that falls behind shows in the percentiles instead of slowing the
generator down (no coordinated omission). Each granted key is released on the same connection
(not timed). Run as its own process, so its CPU is measured apart (and it can be pinned):

    .venv/bin/python -m bench.open_loop --url http://127.0.0.1:8000 --process p --rate 1000 \\
        --duration 10 --connections 16 --out /tmp/latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.http_load import grant_request, release, response


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)]


async def _connection(
    host: str,
    port: int,
    *,
    process: str,
    due: asyncio.Queue[float | None],
    latencies: list[float],
    service: list[float],
    counts: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    grant = grant_request(host, process, "open-loop")
    try:
        while (at := await due.get()) is not None:
            sent = time.perf_counter()
            writer.write(grant)
            status, answer = await response(reader)
            done = time.perf_counter()
            if status != 201:
                counts["grant_bad"] += 1
                continue
            latencies.append((done - at) * 1e6)
            service.append((done - sent) * 1e6)
            counts[await release(reader, writer, host, answer)] += 1
    finally:
        writer.close()


async def generate(
    url: str, process: str, rate: float, duration: float, connections: int
) -> dict[str, object]:
    """Offer `rate` grants/s for `duration` s on `connections` keep-alive connections."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    due: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    service: list[float] = []
    counts = dict.fromkeys(("released", "grant_bad", "release_bad", "unparsed"), 0)
    workers = [
        asyncio.create_task(
            _connection(
                host,
                port,
                process=process,
                due=due,
                latencies=latencies,
                service=service,
                counts=counts,
            )
        )
        for _ in range(connections)
    ]
    await asyncio.sleep(0.2)  # connected
    total = int(rate * duration)
    start = time.perf_counter()
    late = 0.0
    for i in range(total):
        at = start + i / rate
        wait = at - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            late = max(late, -wait)
        due.put_nowait(at)
    for _ in workers:
        due.put_nowait(None)
    results = await asyncio.gather(*workers, return_exceptions=True)
    elapsed = time.perf_counter() - start
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {
        "offered_per_second": rate,
        "connections": connections,
        "grants": len(latencies),
        "achieved_per_second": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50) / 1000,
        "p99_ms": _percentile(latencies, 99) / 1000,
        "p999_ms": _percentile(latencies, 99.9) / 1000,
        "max_ms": max(latencies, default=math.nan) / 1000,
        "service_p50_ms": _percentile(service, 50) / 1000,
        "service_p99_ms": _percentile(service, 99) / 1000,
        "generator_late_ms": late * 1000,
        "errors": errors,
        **counts,
    }


def main() -> None:
    """The generator's command line: writes its JSON summary to --out."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--process", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # noqa: PLC0415 - the fastest loop there is, for the generator too

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    summary = run(generate(args.url, args.process, args.rate, args.duration, args.connections))
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
