"""Mutual exclusion under load for batch runs: two replicas, attempts, backoff, request ids,
`fatal` releases and a `once` process whose passes fail (max_failed_keys).

test_exclusion.py's checker (tests.soak.check) over workers that use the Python client's
`acquire`, which sends a request id and retries a lost grant with it; here every fourth grant
is also sent again with the same id, as a client whose answer was lost would. A third of the
failed releases are `fatal`; when a pass fails (or completes), a worker starts the next.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from coordinator.client.http import AsyncHttpCoordinator
from coordinator.embedded import EmbeddedValkey
from coordinator.errors import AllQuarantined, LeaseGone, NoFreeKey, PassComplete, PassFailed
from coordinator.models import BatchKey
from tests.soak import BEHAVIOURS, Lease, Report, check, two_replicas

pytestmark = pytest.mark.anyio

PROCESSES = 3
WORKERS = 8
SECONDS = 15


def _expires(key: BatchKey) -> float:
    assert key.expires_at is not None
    return key.expires_at.timestamp()


async def _cycle(
    client: AsyncHttpCoordinator, process: str, machine: str,
    leases: list[Lease], report: Report, replays: Counter[str], rng: random.Random,
    ends: Counter[str],
) -> None:  # fmt: skip
    """One grant (sent again with its request id now and then), then one behaviour."""
    request_id = uuid.uuid4().hex
    replay = rng.random() < 0.25
    # A replayed grant's lease lasts 2 s, so it is surely live when the same request comes again.
    lease_seconds = 2 if replay else rng.choice((1, 2))
    try:
        granted = await client.acquire(process, machine, lease_seconds, 1, request_id)
    except NoFreeKey:
        report.statuses[409] += 1
        return
    except (AllQuarantined, PassComplete) as stopped:
        report.statuses[409] += 1
        ends["pass failed"] += isinstance(stopped, PassFailed)
        await client.start_pass(process)  # lift the quarantine so the load goes on
        return
    lease = Lease(process, granted.key, granted.fencing_token or 0, time.time(), _expires(granted))
    leases.append(lease)
    report.statuses[201] += 1
    if replay:
        again = await client.acquire(process, machine, 1, 1, request_id)
        replays["same lease" if again.external_id == granted.external_id else "other"] += 1
        replays["replayed"] += again.replayed
        assert again.fencing_token == granted.fencing_token
        lease.expires = max(lease.expires, _expires(again))
    behaviour = rng.choice(BEHAVIOURS)
    report.by_behaviour[behaviour] += 1
    await asyncio.sleep(rng.uniform(0, 0.3))
    if behaviour == "abandon":
        return  # never released: it ends by expiry and counts as an attempt
    assert granted.external_id is not None
    try:
        if behaviour == "renew":
            for _ in range(rng.randint(1, 3)):
                lease.expires = _expires(await client.renew(granted.external_id))
                await asyncio.sleep(rng.uniform(0.2, 0.6))
        lease.ended = time.time()
        outcome = "completed"
        if behaviour == "failed":
            outcome = "fatal" if rng.random() < 1 / 3 else "failed"
        ends[outcome] += 1
        await client.release(granted.external_id, outcome)
    except LeaseGone:
        report.statuses[410] += 1  # expired while the worker slept: it ended at its expiry
        lease.ended = float("inf")


async def _worker(
    client: AsyncHttpCoordinator, process: str, n: int, deadline: float,
    leases: list[Lease], report: Report, replays: Counter[str], rng: random.Random,
    ends: Counter[str],
) -> None:  # fmt: skip
    while time.time() < deadline:
        await _cycle(client, process, f"worker-{n}", leases, report, replays, rng, ends)


@pytest.mark.timeout(120)
async def test_batch_run_leases_never_overlap(valkey: EmbeddedValkey, tmp_path: Path) -> None:
    report, leases, replays, ends = Report(), list[Lease](), Counter[str](), Counter[str]()
    rng = random.Random(11)
    run = uuid.uuid4().hex[:8]
    names = [f"runs-{run}-{p}" for p in range(PROCESSES)]
    with two_replicas(valkey.url, tmp_path) as bases:
        clients = [AsyncHttpCoordinator(base, timeout=30) for base in bases]
        try:
            for name in names[:-1]:
                await clients[0].register(name, 8, max_attempts=3, retry_backoff_seconds=1)
            # The last sweeps its keys once per pass, and a pass with 2 keys quarantined fails.
            await clients[0].register(
                names[-1], 8, max_attempts=3, retry_backoff_seconds=1, mode="once",
                max_failed_keys=1,
            )  # fmt: skip
            deadline = time.time() + SECONDS
            await asyncio.gather(*(
                _worker(clients[(p * WORKERS + n) % 2], name, n, deadline, leases, report,
                        replays, random.Random(rng.random()), ends)
                for p, name in enumerate(names) for n in range(WORKERS)
            ))  # fmt: skip
            check(leases, report)
            # Abandoned leases end by expiry; wait them out, then nothing may be held.
            latest = max((lease.expires for lease in leases), default=time.time())
            await asyncio.sleep(max(0.0, latest - time.time()) + 0.05)
            for name in names:
                keys = await clients[0].keys(name)
                report.held_at_end += [f"{name}/{k.key}" for k in keys if k.external_id]
                attempts = [k.attempts for k in keys]
                assert all(0 <= a <= 3 for a in attempts), attempts
        finally:
            for client in clients:
                await client.aclose()
    print(report.summary(), dict(replays), dict(ends))
    assert report.leases > 100  # fewer than test_exclusion's: keys back off and quarantine
    assert set(report.by_behaviour) == set(BEHAVIOURS)
    assert report.overlaps == []
    assert report.token_regressions == []
    assert report.held_at_end == []
    assert report.statuses[409] > 0  # keys ran out, or backed off, at times
    assert replays["other"] == 0
    assert replays["same lease"] == replays["replayed"] > 0
    assert ends["fatal"] > 0
    assert ends["pass failed"] > 0
