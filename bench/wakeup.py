"""How soon a waiting grant gets a key after it is released (real Valkey, one process).

.venv/bin/python bench/wakeup.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from coordinator.embedded import EmbeddedValkey
from coordinator.store import Store


async def measure(url: str, rounds: int) -> list[float]:
    """Milliseconds from a release returning to the blocked waiter's grant returning."""
    async with Redis.from_url(url, decode_responses=True) as redis:
        store = Store(redis, prefix="wakeup")
        await store.register("busy", 1)
        latencies = []
        for _ in range(rounds):
            held = await store.grant("busy", "holder")
            waiter = asyncio.create_task(store.grant("busy", "waiter", wait_seconds=10))
            # Polls Valkey's client list until the waiter blocks: no local event to wait on.
            while not any(c.get("cmd") == "blpop" for c in await redis.client_list()):  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            await store.release(held.external_id or "")
            released = time.perf_counter()
            granted = await waiter
            latencies.append((time.perf_counter() - released) * 1000)
            await store.release(granted.external_id or "")
        return sorted(latencies)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as data, EmbeddedValkey(Path(data)) as valkey:
        ms = asyncio.run(measure(valkey.url, rounds))
    p99 = ms[max(0, round(len(ms) * 0.99) - 1)]
    print(f"wake-up after release, {len(ms)} rounds: median {statistics.median(ms):.2f} ms,"
          f" p99 {p99:.2f} ms, max {ms[-1]:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
