"""Long listings beside other clients: bystanders' renewal latency while one client streams a
1,000,000-key listing, or the whole process list, from the same `coordinator serve`.

    .venv/bin/python -m bench.listing_scale [--keys N] [--processes N] [--repeats N]
                                            [--source DIR]

Standalone, it starts a private Valkey and one `coordinator serve` (from `--source`, a checkout
of another commit, to measure before and after), registers `--processes` idle ones (through
the store, as bench/scale.py does) and prints the figures as JSON: the key listing's, then one
process page and the dashboard's first render, then the whole process list's. The bench calls
`listing_bystanders`, `page_and_dashboard` and `process_list_bystanders` on a server of its
own.

The listed process's keys are all touched first (each in the free set with a completion time,
below `fresh`), as after one completed lease each: inspect.lua's costly path, which untouched
keys skip. They are written straight into the free set, which a grant and a release per key
would also leave (a million cycles take minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from bench import bystander, scale
from bench.http_load import Server
from coordinator.embedded import EmbeddedValkey, free_port
from coordinator.keys import KeySpace

ROOT = Path(__file__).resolve().parent.parent
LISTED = "bench-listed"
TOUCH_CHUNK = 20_000


async def touch_every_key(redis_url: str, name: str, keys: int, prefix: str = "bpc") -> None:
    """Leave every key of `name` as one completed lease would: scored in the free set."""
    k = KeySpace(prefix).process(name)
    redis = Redis.from_url(redis_url)
    try:
        now_us = int(time.time() * 1_000_000)
        for start in range(0, keys, TOUCH_CHUNK):
            stop = min(keys, start + TOUCH_CHUNK)
            await redis.zadd(k.free, {str(i): now_us - keys + i for i in range(start, stop)})
        await redis.hset(k.meta, "fresh", keys)
    finally:
        await redis.aclose()


async def listing_bystanders(
    base: str,
    redis_url: str,
    *,
    keys: int = 1_000_000,
    repeats: int = 2,
    limit_seconds: float = 300.0,
    prefix: str = "bpc",
) -> dict[str, Any]:
    """Renewal latency of bystanders (bench/bystander.py) during `repeats` whole streamed
    listings of a process of `keys` touched keys; `prefix` is the server's key prefix."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        answer = await client.post(
            "/api/v1/process", json={"process_name": LISTED, "key_set_size": keys}
        )
        if answer.status_code not in (201, 409):
            answer.raise_for_status()
    await touch_every_key(redis_url, LISTED, keys, prefix)
    figures = await bystander.during(
        base,
        f"{base}/api/v1/process/batch_keys/{LISTED}",
        repeats=repeats,
        limit_seconds=limit_seconds,
    )
    return {"keys": keys, **figures}


async def process_list_bystanders(
    base: str, *, repeats: int = 2, limit_seconds: float = 300.0
) -> dict[str, Any]:
    """Renewal latency of bystanders during `repeats` whole (unpaged) process lists of the
    processes registered now."""
    return await bystander.during(
        base, f"{base}/api/v1/process", repeats=repeats, limit_seconds=limit_seconds
    )


def page_and_dashboard(base: str, repeats: int = 3) -> dict[str, Any]:
    """One process page (`bench.scale.PAGE`) and the dashboard's first render, as the scale
    figure takes them."""
    return {
        "page": scale.page(base, repeats, 120.0),
        "dashboard": scale.dashboard(base, 60.0, 4.0),
    }


def _serve(valkey: EmbeddedValkey, source: Path, work: Path) -> Server:
    port = free_port()
    # -P: the package comes from PYTHONPATH (`source`), not from the working directory.
    command = [str(ROOT / ".venv/bin/python"), "-P", "-m", "coordinator.cli", "serve", "--port",
               str(port)]  # fmt: skip
    env = {
        **os.environ,
        "COORDINATOR_REDIS_URL": valkey.url,
        "COORDINATOR_MAX_KEY_SET_SIZE": "1000000",
        "PYTHONPATH": str(source),
    }
    return Server(command, env, port, work / "listing.log")


def main() -> None:
    """Measure on a private Valkey and one server; print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="0: no key listing")
    parser.add_argument("--processes", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout that serves")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpc-listing-") as tmp:
        work = Path(tmp)
        with EmbeddedValkey(work / "valkey") as valkey, _serve(valkey, args.source, work) as srv:
            out: dict[str, Any] = {"source": str(args.source)}
            if args.keys:
                out["key_listing"] = asyncio.run(
                    listing_bystanders(srv.url, valkey.url, keys=args.keys, repeats=args.repeats)
                )
                print(json.dumps(out["key_listing"]), file=sys.stderr, flush=True)
            if args.processes:
                seconds = asyncio.run(scale.register_range(valkey.url, 0, args.processes, "bpc"))
                out["registered"] = {"processes": args.processes, "seconds": seconds}
                out["page_and_dashboard"] = page_and_dashboard(srv.url)
                print(json.dumps(out["page_and_dashboard"]), file=sys.stderr, flush=True)
                out["process_list"] = asyncio.run(
                    process_list_bystanders(srv.url, repeats=args.repeats)
                )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
