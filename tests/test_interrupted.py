"""A release `interrupted` is not a failure: the key goes back as it was.

No attempt is counted, the checkpoint stays, the key keeps its place among the free keys (it is
not parked), and the history records `released-interrupted`. A lease already expired when it is
released interrupted is still the expiry it was. The outcomes and event types the scripts know
are the ones coordinator/validation.py and coordinator/models.py declare. Each store test runs on
the real Valkey and on fakeredis[lua].
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import httpx
import pytest

from coordinator import validation
from coordinator.errors import InvalidField, LeaseGone
from coordinator.metrics import OUTCOMES as METRIC_OUTCOMES
from coordinator.models import EVENT_TYPES
from coordinator.openapi import document
from coordinator.scripts import sources
from coordinator.store import Store
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

KEYS = "/api/v1/process/batch_keys"


async def _types(store: Store, name: str) -> list[str]:
    return [e.type for e in await store.events(name, limit=1000)]


async def test_interrupted_keeps_attempts_checkpoint_and_place(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=3, max_attempts=3)
    # Key 0 completed (stalest afterwards: the others never completed), key 1 failed once.
    done = await store.grant(name, "w")
    await store.release(done.external_id)
    failed = await store.grant(name, "w")
    assert failed.key == 1
    await store.release(failed.external_id, "failed")

    lease = await store.grant(name, "w")
    assert (lease.key, lease.attempts) == (1, 1)
    await store.renew(lease.external_id, checkpoint="row 41")
    released = await store.release(lease.external_id, "interrupted")
    assert (released.key, released.attempts, released.state) == (1, 1, "free")
    assert released.last_completed_at is None  # never completed: its old score, not now

    # Back at its old place: still the stalest free key, attempts and checkpoint as they were.
    again = await store.grant(name, "w")
    assert (again.key, again.attempts, again.checkpoint) == (1, 1, "row 41")
    assert "released-interrupted" in await _types(store, name)


async def test_interrupted_never_quarantines(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=1, max_attempts=1, retry_backoff_seconds=60)
    for _ in range(3):
        lease = await store.grant(name, "w")
        assert lease.attempts == 0
        released = await store.release(lease.external_id, "interrupted")
        assert (released.state, released.attempts, released.retry_at) == ("free", 0, None)
    process = await store.process(name)
    assert process.pass_ is not None
    assert process.pass_.keys_quarantined == 0
    # A failure, by contrast, quarantines it at once: the interruptions counted nothing.
    lease = await store.grant(name, "w")
    assert (await store.release(lease.external_id, "failed")).state == "quarantined"


async def test_a_completed_key_interrupted_keeps_its_completion(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=1)
    first = await store.grant(name, "w")
    completed = await store.release(first.external_id)
    second = await store.grant(name, "w")
    released = await store.release(second.external_id, "interrupted")
    assert released.last_completed_at == completed.last_completed_at


@pytest.fixture
async def clocked(fake_clock: FakeClock, prefix: str) -> AsyncIterator[Store]:
    """A Store on a fresh fakeredis whose TIME the test moves (fake_clock.advance)."""
    client = fakeredis.FakeAsyncRedis(decode_responses=True, server=fakeredis.FakeServer())
    async with client:
        yield Store(client, prefix=prefix)


async def test_an_expired_lease_released_interrupted_is_still_an_expiry(
    clocked: Store, fake_clock: FakeClock
) -> None:
    store = clocked
    await store.register("p", key_set_size=1, lease_seconds=10)
    lease = await store.grant("p", "w")
    fake_clock.advance(11)
    with pytest.raises(LeaseGone):
        await store.release(lease.external_id, "interrupted")
    assert (await store.grant("p", "w")).attempts == 1
    types = await _types(store, "p")
    assert "expired" in types
    assert "released-interrupted" not in types


async def test_an_unknown_outcome_is_refused(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=1)
    lease = await store.grant(name, "w")
    with pytest.raises(InvalidField, match="interrupted"):
        await store.release(lease.external_id, "paused")


async def test_http_release_interrupted_is_counted_in_metrics(
    client: httpx.AsyncClient, register: Callable[..., Any]
) -> None:
    process = await register(key_set_size=1, max_attempts=1)
    granted = await client.post(
        KEYS, json={"process_name": process["process_name"], "machine": "m"}
    )
    assert granted.status_code == 201, granted.text
    external_id = granted.json()["external_id"]
    await client.patch(f"{KEYS}/{external_id}", json={"checkpoint": "half"})
    released = await client.delete(f"{KEYS}/{external_id}", params={"outcome": "interrupted"})
    assert released.status_code == 200, released.text
    assert (released.json()["attempts"], released.json()["state"]) == (0, "free")
    again = await client.post(KEYS, json={"process_name": process["process_name"], "machine": "m"})
    assert (again.json()["attempts"], again.json()["checkpoint"]) == (0, "half")
    metrics = (await client.get("/metrics")).text
    assert 'coordinator_releases_total{outcome="interrupted"} 1.0' in metrics


# --- one declaration: the scripts, validation, models, OpenAPI and metrics agree ----------------


def _lua_event_types() -> set[str]:
    """Every history entry type any script can write."""
    found: set[str] = set()
    for source in sources().values():
        found |= set(re.findall(r"record\('([a-z-]+)'", source))
        found |= set(re.findall(r"'type', '([a-z-]+)'", source))
        for table in re.findall(r"local EVENT_OF = \{(.*?)\}", source, re.S):
            found |= set(re.findall(r"= '([a-z-]+)'", table))
    return found


def test_release_lua_knows_exactly_the_declared_outcomes() -> None:
    table = re.search(r"local EVENT_OF = \{(.*?)\}", sources()["release"], re.S)
    assert table is not None
    pairs = dict(re.findall(r"([a-z]+) = '([a-z-]+)'", table.group(1)))
    assert pairs == {
        **{outcome: f"released-{outcome}" for outcome in validation.OUTCOMES},
        validation.REVOKED: "revoked",
    }


def test_every_event_type_the_scripts_write_is_declared() -> None:
    assert _lua_event_types() == set(EVENT_TYPES)


def test_openapi_and_metrics_derive_from_the_declarations() -> None:
    openapi = document()
    assert openapi["components"]["schemas"]["Event"]["properties"]["type"]["enum"] == list(
        EVENT_TYPES
    )
    release = openapi["paths"]["/api/v1/process/batch_keys/{id}"]["delete"]
    (outcome,) = [p for p in release["parameters"] if p["name"] == "outcome"]
    assert outcome["schema"]["enum"] == list(validation.OUTCOMES)
    assert "interrupted" in validation.OUTCOMES
    assert set(validation.OUTCOMES) <= set(METRIC_OUTCOMES["release"])
