"""The exclusion checker: many workers on two API replicas, then every lease checked.

    .venv/bin/python -m tests.soak --seconds 300     # `make soak`

Workers log, per lease, the key, the token, when the grant's answer arrived and when the
release was sent (or when the lease expired, for those abandoned). All times are read from
this machine's clock, which Redis's TIME also reads, so server expiries and client times
compare directly. Two leases of one key must not overlap while both were unexpired.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from coordinator.embedded import EmbeddedValkey
from coordinator.models import from_rfc3339
from tests.test_serve import _env, serving

API = "/api/v1/process"
BEHAVIOURS = ("completed", "failed", "abandon", "renew")


@dataclass
class Lease:
    """One grant as a worker saw it; times in seconds since the epoch."""

    process: str
    key: int
    token: int
    granted: float  # when the grant's answer arrived
    expires: float  # the latest expiry the service told this worker
    ended: float = float("inf")  # when the release was sent, if it was


@dataclass
class Report:
    """What the checker counted."""

    leases: int = 0
    by_behaviour: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    overlaps: list[str] = field(default_factory=list)
    token_regressions: list[str] = field(default_factory=list)
    held_at_end: list[str] = field(default_factory=list)
    transport_errors: int = 0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> str:
        behaviours = ", ".join(f"{k} {v}" for k, v in sorted(self.by_behaviour.items()))
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"leases checked {self.leases} ({behaviours}); responses {statuses};"
            f" overlaps {len(self.overlaps)}; token regressions {len(self.token_regressions)};"
            f" 5xx {self.server_errors}; keys held at the end {len(self.held_at_end)};"
            f" connection failures {self.transport_errors}"
        )


def _end(lease: Lease) -> float:
    """The end of the time the lease was unexpired and not yet given back."""
    return min(lease.ended, lease.expires)


def check(leases: list[Lease], report: Report) -> None:
    """Count overlapping leases of one key and tokens that failed to grow."""
    by_key: dict[tuple[str, int], list[Lease]] = defaultdict(list)
    for lease in leases:
        by_key[(lease.process, lease.key)].append(lease)
    report.leases = len(leases)
    for (process, key), held in by_key.items():
        held.sort(key=lambda lease: lease.granted)
        for earlier, later in itertools.pairwise(held):
            if later.granted < _end(earlier):
                report.overlaps.append(
                    f"{process}/{key}: token {later.token} granted at {later.granted:.6f},"
                    f" token {earlier.token} held until {_end(earlier):.6f}"
                )
            if later.token <= earlier.token:
                report.token_regressions.append(
                    f"{process}/{key}: token {later.token} after {earlier.token}"
                )


async def _worker(
    client: httpx.AsyncClient, process: str, n: int, deadline: float,
    leases: list[Lease], report: Report, rng: random.Random, tolerate: bool,
) -> None:  # fmt: skip
    while time.time() < deadline:
        try:
            await _cycle(client, process, n, leases, report, rng)
        except httpx.TransportError:
            # Only a test that kills a replica tolerates this; its leases then end by expiry.
            if not tolerate:
                raise
            report.transport_errors += 1
            await asyncio.sleep(0.05)


async def _cycle(
    client: httpx.AsyncClient, process: str, n: int,
    leases: list[Lease], report: Report, rng: random.Random,
) -> None:  # fmt: skip
    """One grant, then complete, fail, abandon or renew it."""
    machine = f"worker-{n}"
    response = await client.post(
        f"{API}/batch_keys",
        json={"process_name": process, "machine": machine,
              "lease_seconds": rng.choice((1, 2)), "wait_seconds": 1},
    )  # fmt: skip
    report.statuses[response.status_code] += 1
    if response.status_code != 201:
        return
    body = response.json()
    lease = Lease(process, body["key"], body["fencing_token"], time.time(),
                  (from_rfc3339(body["expires_at"]) or 0) / 1e6)  # fmt: skip
    leases.append(lease)
    behaviour = rng.choice(BEHAVIOURS)
    report.by_behaviour[behaviour] += 1
    url = f"{API}/batch_keys/{body['external_id']}"
    await asyncio.sleep(rng.uniform(0, 0.3))
    if behaviour == "abandon":
        return  # never released: the lease must expire before the key moves on
    outcome = "failed" if behaviour == "failed" else "completed"
    if behaviour == "renew":
        for _ in range(rng.randint(1, 3)):
            renewed = await client.patch(url)
            report.statuses[renewed.status_code] += 1
            if renewed.status_code != 200:
                break
            lease.expires = (from_rfc3339(renewed.json()["expires_at"]) or 0) / 1e6
            await asyncio.sleep(rng.uniform(0.2, 0.6))
    lease.ended = time.time()
    try:
        released = await client.delete(url, params={"outcome": outcome})
    except httpx.TransportError:
        lease.ended = float("inf")  # the release may never have arrived: it ends by expiry
        raise
    report.statuses[released.status_code] += 1


async def run(
    bases: list[str],
    seconds: float,
    processes: int = 3,
    workers: int = 16,
    seed: int = 1,
    *,
    tolerate: bool = False,
) -> Report:
    """Drive the replicas for `seconds`, then check every lease and the final key table."""
    report, leases = Report(), []
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=200)
    clients = [httpx.AsyncClient(base_url=b, timeout=30, limits=limits) for b in bases]
    try:
        names = [f"soak-{seed}-{p}" for p in range(processes)]
        for name in names:
            created = await clients[0].post(API, json={"process_name": name, "key_set_size": 8})
            assert created.status_code == 201, created.text
        deadline = time.time() + seconds
        await asyncio.gather(*(
            _worker(clients[(p * workers + n) % len(clients)], name, n, deadline, leases,
                    report, random.Random(rng.random()), tolerate)
            for p, name in enumerate(names) for n in range(workers)
        ))  # fmt: skip
        check(leases, report)
        # Abandoned leases end by expiry; wait them out, then nothing may be held.
        latest = max((lease.expires for lease in leases), default=time.time())
        await asyncio.sleep(max(0.0, latest - time.time()) + 0.05)
        for name in names:
            keys = (await clients[0].get(f"{API}/batch_keys/{name}")).json()
            report.held_at_end += [f"{name}/{k['key']}" for k in keys if k["external_id"]]
    finally:
        for client in clients:
            await client.aclose()
    return report


@contextmanager
def two_replicas(valkey_url: str, tmp: Path) -> Iterator[list[str]]:
    """Two `coordinator serve` processes sharing one Valkey."""
    with ExitStack() as stack:
        bases = []
        for n in range(2):
            env = _env(tmp / f"replica{n}" / "data", COORDINATOR_REDIS_URL=valkey_url)
            (tmp / f"replica{n}").mkdir(parents=True, exist_ok=True)
            bases.append(stack.enter_context(serving(env)).base)
        yield bases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(Path(tmp) / "valkey") as valkey, \
            two_replicas(valkey.url, Path(tmp)) as bases:  # fmt: skip
        report = asyncio.run(run(bases, args.seconds, seed=args.seed))
    print(report.summary())
    for line in report.overlaps[:20] + report.token_regressions[:20] + report.held_at_end[:20]:
        print("  " + line)
    failed = report.overlaps or report.token_regressions or report.server_errors
    return 1 if failed or report.held_at_end else 0


if __name__ == "__main__":
    sys.exit(main())
