"""A release `fatal`: the work can never succeed as it is, so the key is quarantined at once.

Whatever its retry budget (even with no max_attempts, on a process registered without options),
the attempt is counted, the history records `released-fatal` then `quarantined`, and the key is
granted again only after a retry or a new pass. Store tests run on the real Valkey and on
fakeredis[lua]; the HTTP and client paths end the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from coordinator.client.direct import AsyncRedisCoordinator
from coordinator.client.lease_exit import outcome_on_leaving
from coordinator.embedded import EmbeddedValkey
from coordinator.errors import AllQuarantined, PassComplete
from coordinator.store import Store

pytestmark = pytest.mark.anyio

KEYS = "/api/v1/process/batch_keys"


async def _types(store: Store, name: str) -> list[str]:
    return [e.type for e in await store.events(name, limit=1000)]


async def test_fatal_quarantines_at_once_whatever_the_budget(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=3, max_attempts=5, retry_backoff_seconds=60)
    lease = await store.grant(name, "host-a")
    released = await store.release(lease.external_id, "fatal")
    assert (released.key, released.attempts, released.state) == (lease.key, 1, "quarantined")
    assert released.retry_at is None  # no backoff first: quarantined outright
    assert (await _types(store, name))[-2:] == ["released-fatal", "quarantined"]
    process = await store.process(name)
    assert process.pass_ is not None
    assert process.pass_.keys_quarantined == 1
    # Never granted again until retried.
    others = [await store.grant(name, "w") for _ in range(2)]
    assert lease.key not in {o.key for o in others}
    assert (await store.batch_key(name, lease.key)).state == "quarantined"


async def test_fatal_works_on_a_process_without_options(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=2)
    first = await store.grant(name, "w")
    released = await store.release(first.external_id, "fatal")
    assert (released.attempts, released.state) == (1, "quarantined")
    second = await store.grant(name, "w")
    assert second.key != first.key
    await store.release(second.external_id)
    again = await store.grant(name, "w")
    assert again.key == second.key  # the quarantined key is skipped, again and again
    await store.release(again.external_id, "fatal")
    with pytest.raises(AllQuarantined):
        await store.grant(name, "w")
    process = await store.process(name)
    assert process.pass_ is not None
    assert process.pass_.keys_quarantined == 2
    assert [k.state for k in await store.batch_keys(name)] == ["quarantined", "quarantined"]
    # A retry lifts it, as for any quarantine.
    retried = await store.retry_key(name, first.key)
    assert (retried.state, retried.attempts) == ("free", 0)
    assert (await store.grant(name, "w")).key == first.key


async def test_a_once_pass_without_options_completes_with_its_fatal_key(
    store: Store, new_name
) -> None:
    # The quarantine must be counted by the call that completes the pass, though the process
    # has none of the options that park keys.
    name = new_name()
    await store.register(name, key_set_size=3, mode="once")
    leases = [await store.grant(name, "w") for _ in range(3)]
    await store.release(leases[0].external_id)
    await store.release(leases[1].external_id, "fatal")
    await store.release(leases[2].external_id)
    current = (await store.process(name)).pass_
    assert current is not None
    assert (current.keys_done, current.keys_quarantined, current.complete) == (2, 1, True)
    with pytest.raises(PassComplete):
        await store.grant(name, "w")
    # A new pass lifts the quarantine and forgets the failure's machine.
    await store.start_pass(name)
    keyinfo = store.keys.process(name).keyinfo
    assert await store.redis.hget(keyinfo, f"m:{leases[1].key}") is None
    assert sorted([(await store.grant(name, "w")).key for _ in range(3)]) == [0, 1, 2]


async def test_http_release_fatal(client: httpx.AsyncClient, register: Callable[..., Any]) -> None:
    process = await register(key_set_size=2)
    granted = await client.post(
        KEYS, json={"process_name": process["process_name"], "machine": "m"}
    )
    assert granted.status_code == 201, granted.text
    external_id = granted.json()["external_id"]
    released = await client.delete(f"{KEYS}/{external_id}", params={"outcome": "fatal"})
    assert released.status_code == 200, released.text
    assert (released.json()["attempts"], released.json()["state"]) == (1, "quarantined")
    metrics = (await client.get("/metrics")).text
    assert 'coordinator_releases_total{outcome="fatal"} 1.0' in metrics


async def test_a_lease_failed_fatal_is_released_fatal(
    valkey: EmbeddedValkey, prefix: str, new_name
) -> None:
    name = new_name()
    async with AsyncRedisCoordinator(valkey.url, prefix=prefix) as coordinator:
        assert isinstance(coordinator, AsyncRedisCoordinator)
        await coordinator.register(name, key_set_size=2, max_attempts=3)
        async with coordinator.lease(name, "w") as lease:
            lease.fail(fatal=True)
        key = await coordinator.store.batch_key(name, lease.key)
    assert (key.state, key.attempts) == ("quarantined", 1)
    # Raising out of the block after fail(fatal=True) is fatal too; interrupting is not.
    assert outcome_on_leaving(ValueError, failed=True, interrupted=False, fatal=True) == "fatal"
    assert outcome_on_leaving(None, failed=True, interrupted=True, fatal=True) == "interrupted"


async def test_a_caller_older_than_batch_runs_releases_fatal_as_failed(
    store: Store, new_name
) -> None:
    # Without KEYS 8-11 there is nowhere to park the key: it goes back to the free set.
    name = new_name()
    await store.register(name, key_set_size=1)
    lease = await store.grant(name, "w")
    keys = store.keys.process(name).of("release")[:7]
    reply = await store.scripts.call("release", keys, [lease.fencing_token, "fatal"])
    assert reply[0] == 0
    assert reply[7] == "free"
    assert (await store.grant(name, "w")).key == lease.key
