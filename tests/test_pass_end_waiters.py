"""A pass that ends answers every grant waiting on it, on every replica, at once.

Two replicas (the app in-process, each on its own pool) share the real Valkey; twelve grants
wait on them, six each, with a wait far longer than the test. When the last held key ends the
pass, the replica whose waiter learns it answers its whole queue and pushes a signal back, so
the other replica's listener learns it too.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from coordinator.embedded import EmbeddedValkey
from tests.test_waiters import API, GRANT, Replica, replicas, until

pytestmark = pytest.mark.anyio

WAITERS = 12
WAIT_SECONDS = 30
# Far under WAIT_SECONDS, and generous for a loaded 2-core machine: before the fix, 11 of 12
# waited out their own wait.
ANSWERED_WITHIN_SECONDS = 5


@pytest.mark.parametrize(
    ("mode", "outcome", "code"),
    [
        ("once", "completed", "pass_complete"),  # the last key done completes the pass
        ("rotate", "failed", "all_quarantined"),  # the last key's last attempt quarantines it
    ],
)
async def test_a_pass_that_ends_answers_every_waiter_on_every_replica_at_once(
    valkey: EmbeddedValkey, prefix: str, mode: str, outcome: str, code: str
) -> None:
    async with replicas(valkey, prefix, 2) as served:
        first, second = served
        created = await first.http.post(
            API,
            json={"process_name": "p", "key_set_size": 1, "mode": mode, "max_attempts": 1},
        )
        assert created.status_code == 201, created.text
        held = await first.http.post(GRANT, json={"process_name": "p", "machine": "holder"})
        assert held.status_code == 201, held.text

        async def wait_on(replica: Replica, n: int) -> tuple[httpx.Response, float]:
            answer = await replica.http.post(
                GRANT,
                json={"process_name": "p", "machine": f"w{n}", "wait_seconds": WAIT_SECONDS},
                timeout=WAIT_SECONDS + 10,
            )
            return answer, time.monotonic()

        waiting = [asyncio.create_task(wait_on(served[n % 2], n)) for n in range(WAITERS)]
        await until(lambda: sum(r.store.waiters.waiting for r in served) == WAITERS)

        ended_at = time.monotonic()
        released = await second.http.delete(
            f"{GRANT}/{held.json()['external_id']}", params={"outcome": outcome}
        )
        assert released.status_code == 200, released.text
        done, _ = await asyncio.wait(waiting, timeout=ANSWERED_WITHIN_SECONDS)

        answered = [task.result() for task in done]
        assert len(answered) == WAITERS, f"{len(answered)} of {WAITERS} answered"
        codes = Counter((answer.status_code, answer.json()["code"]) for answer, _ in answered)
        assert codes == {(409, code): WAITERS}, codes
        latest = max(at for _, at in answered) - ended_at
        print(f"\n{WAITERS} waiters on 2 replicas answered {code} within {latest:.3f} s")
        assert sum(r.store.waiters.waiting for r in served) == 0
        # No ping-pong: with no waiter left, every listener stops, and the signals pushed
        # back (at most one per waiter that learned of the end; here about one per replica)
        # wait on the list to expire.
        await until(lambda: sum(r.store.waiters.listeners for r in served) == 0, 5)
        freed = first.store.keys.process("p").freed
        left = await first.store.redis.llen(freed)
        print(f"{left} signal(s) left on the list")
        assert left <= WAITERS
