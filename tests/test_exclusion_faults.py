"""The exclusion checker (tests/soak.py) on two `coordinator serve` replicas whose Valkey
connections all go through the fault proxy (tests/faultproxy.py), while every fault kind
takes its turn: no key ever has two holders, tokens only rise, the only 5xx is 503, and once
a fault is lifted a grant succeeds within a second on each replica.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from coordinator.embedded import EmbeddedValkey
from tests.faultproxy import FaultProxy, Faults
from tests.soak import Lease, Report, _cycle, check
from tests.test_serve import _env, serving

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
TIMEOUT = 0.5  # the replicas' Redis timeout: a call stalled past it answers 503
HOLD = 1.0  # seconds each fault lasts


def _fault_kinds(proxy: FaultProxy) -> dict[str, Callable[[Faults], None]]:
    """Each fault, as what it sets (the idle reset resets every open connection)."""
    return {
        "latency both ways": lambda f: _set(f, latency_up=0.15, latency_down=0.15),
        "latency one way, past the timeout": lambda f: _set(f, latency_down=2 * TIMEOUT),
        "reset mid-reply": lambda f: _set(f, reset_mid_reply=True),
        "blackhole": lambda f: _set(f, blackhole=True),
        "idle reset": lambda _: _reset(proxy),
        "throttle": lambda f: _set(f, throttle=2_000),
    }  # fmt: skip


def _reset(proxy: FaultProxy) -> None:
    assert proxy.reset_connections() > 0


def _set(faults: Faults, **values: object) -> None:
    for name, value in values.items():
        setattr(faults, name, value)


async def _worker(
    http: httpx.AsyncClient, process: str, n: int, stop: asyncio.Event, going: asyncio.Event,
    leases: list[Lease], report: Report, rng: random.Random,
) -> None:  # fmt: skip
    while not stop.is_set():
        await going.wait()
        refused = report.statuses[503]
        await _cycle(http, process, n, leases, report, rng)
        if report.statuses[503] > refused:
            await asyncio.sleep(0.05)  # a client backs off after a 503


async def _first_grant_after(http: httpx.AsyncClient, lifted: float) -> float:
    """Seconds from `lifted` until a grant on `http` succeeds (it is given back at once)."""
    body = {"process_name": "probe", "machine": "probe", "lease_seconds": 1}
    while True:
        response = await http.post(f"{API}/batch_keys", json=body)
        if response.status_code == 201:
            await http.delete(f"{API}/batch_keys/{response.json()['external_id']}")
            return time.monotonic() - lifted
        assert time.monotonic() - lifted < 10, response.text
        await asyncio.sleep(0.02)


@pytest.mark.timeout(120)
async def test_every_fault_keeps_exclusion_and_heals(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    with FaultProxy("127.0.0.1", valkey.port).threaded() as proxy, ExitStack() as stack:
        bases = []
        for n in range(2):
            env = _env(
                tmp_path / f"replica{n}" / "data",
                COORDINATOR_REDIS_URL=proxy.url,
                COORDINATOR_REDIS_TIMEOUT_SECONDS=str(TIMEOUT),
            )
            (tmp_path / f"replica{n}").mkdir()
            bases.append(stack.enter_context(serving(env)).base)
        clients = [httpx.AsyncClient(base_url=b, timeout=30) for b in bases]
        report, leases = Report(), list[Lease]()
        names = ["faults-0", "faults-1"]
        try:
            for name in [*names, "probe"]:
                created = await clients[0].post(API, json={"process_name": name, "key_set_size": 6})
                assert created.status_code == 201, created.text
            stop, going = asyncio.Event(), asyncio.Event()
            going.set()
            rng = random.Random(16)
            seeds = [random.Random(rng.random()) for _ in range(16)]
            workers = [
                asyncio.create_task(
                    _worker(clients[n % 2], name, n, stop, going, leases, report, seeds[n + 8 * i])
                )
                for i, name in enumerate(names)
                for n in range(8)
            ]
            healed: dict[str, list[float]] = {}
            for kind, apply in _fault_kinds(proxy).items():
                apply(proxy.faults)
                await asyncio.sleep(HOLD)  # the fault lasts this long, under load
                # The workers pause as the fault lifts (their calls in flight go on), so the
                # time to heal is the replicas' own, not this process's queue behind sixteen
                # workers and the proxy sharing one interpreter.
                going.clear()
                proxy.faults.clear()
                lifted = time.monotonic()
                healed[kind] = list(
                    await asyncio.gather(*(_first_grant_after(http, lifted) for http in clients))
                )
                going.set()
            stop.set()
            await asyncio.gather(*workers)
            check(leases, report)
            # Leases end by release or expiry (those whose grant's reply was lost, too).
            latest = max((lease.expires for lease in leases), default=time.time()) + 2
            await asyncio.sleep(max(0.0, latest - time.time()) + 0.05)
            for name in names:
                keys = (await clients[0].get(f"{API}/batch_keys/{name}")).json()
                report.held_at_end += [f"{name}/{k['key']}" for k in keys if k["external_id"]]
        finally:
            for http in clients:
                await http.aclose()
    print(report.summary(), {kind: [f"{s:.2f}" for s in took] for kind, took in healed.items()})
    assert report.leases > 30  # most calls meet a fault: many answer 503
    assert report.overlaps == []
    assert report.token_regressions == []
    assert {status for status in report.statuses if status >= 500} <= {503}
    assert report.statuses[503] > 0  # the faults were felt
    assert report.held_at_end == []
    slow = {kind: took for kind, took in healed.items() if max(took) > 1.0}
    assert slow == {}, f"a grant took over a second after the fault was lifted: {slow}"
