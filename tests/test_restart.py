"""State survives a Valkey restart on the same data directory: graceful stop and SIGKILL."""

from __future__ import annotations

import itertools

import pytest
from redis.asyncio import Redis

from coordinator.embedded import EmbeddedValkey
from coordinator.errors import LeaseGone
from coordinator.models import Process
from coordinator.store import Store

pytestmark = pytest.mark.anyio

PREFIX = "restart"


async def build_state(url: str) -> dict:
    """Two processes with completed, failed, held and released keys; return what to expect."""
    async with Redis.from_url(url, decode_responses=True) as client:
        store = Store(client, prefix=PREFIX)
        await store.register("orders", key_set_size=5, lease_seconds=600)
        await store.register("invoices", key_set_size=3, lease_seconds=900)
        orders = []
        for _ in range(3):
            lease = await store.grant("orders", "w-done")
            orders.append(lease)
            await store.release(lease.external_id, "completed")
        failed = await store.grant("orders", "w-fail")
        await store.release(failed.external_id, "failed")
        held = [await store.grant("orders", "w-hold") for _ in range(2)]
        orders += [failed, *held]
        renewed = await store.renew(held[0].external_id, lease_seconds=1200)
        invoice = await store.grant("invoices", "w-inv")
        released = await store.grant("invoices", "w-gone")
        await store.release(released.external_id)
        # Tokens strictly increase per name, so the last grant holds each name's largest.
        tokens = [lease.fencing_token for lease in orders]
        assert all(a < b for a, b in itertools.pairwise(tokens))
        assert invoice.fencing_token < released.fencing_token
        return {
            "processes": await store.processes(),
            "orders": await store.batch_keys("orders"),
            "invoices": await store.batch_keys("invoices"),
            "held": held,
            "renewed": renewed,
            "invoice": invoice,
            "released": released,
            "max_token": {"orders": held[-1].fencing_token, "invoices": released.fencing_token},
        }


async def check_state(url: str, expected: dict) -> None:
    async with Redis.from_url(url, decode_responses=True) as client:
        store = Store(client, prefix=PREFIX)
        assert await store.processes() == expected["processes"]
        assert expected["processes"] == [
            Process("invoices", 3, 900),
            Process("orders", 5, 600),
        ]
        orders = await store.batch_keys("orders")
        assert orders == expected["orders"]
        assert await store.batch_keys("invoices") == expected["invoices"]
        # The held leases, their ids, tokens and deadlines are intact.
        by_key = {k.key: k for k in orders}
        for lease in expected["held"]:
            assert by_key[lease.key].external_id == lease.external_id
            assert by_key[lease.key].fencing_token == lease.fencing_token
        assert by_key[expected["renewed"].key].expires_at == expected["renewed"].expires_at
        assert sum(1 for k in orders if k.last_completed_at is not None) == 3
        # A released lease is still gone; a held one can still be renewed and released.
        with pytest.raises(LeaseGone):
            await store.release(expected["released"].external_id)
        invoice = expected["invoice"]
        assert (await store.renew(invoice.external_id)).fencing_token == invoice.fencing_token
        assert (await store.release(invoice.external_id)).key == invoice.key
        # The failed key 3 kept its place (it was handed out again before fresh 4); now the
        # oldest completion, key 0, is next.
        assert [lease.key for lease in expected["held"]] == [3, 4]
        # The fences survived exactly: each still holds its name's last token. (Tokens have a
        # clock floor, so a larger next token alone would not prove it.)
        for name in ("orders", "invoices"):
            fence = await client.get(store.keys.process(name).fence)
            assert fence == str(expected["max_token"][name])
        nxt = await store.grant("orders", "after")
        assert nxt.key == 0
        second = await store.grant("orders", "after")
        assert second.key == 1
        # Tokens keep growing from there.
        assert nxt.fencing_token > expected["max_token"]["orders"]
        assert second.fencing_token > nxt.fencing_token
        assert (await store.grant("invoices", "after")).fencing_token > expected["max_token"][
            "invoices"
        ]
        # Deleting and re-registering keeps the fence, and the tokens keep growing.
        await store.unregister("orders")
        assert await client.get(store.keys.process("orders").fence) == str(second.fencing_token)
        await store.register("orders", key_set_size=1)
        assert (await store.grant("orders", "again")).fencing_token > second.fencing_token


async def test_state_survives_a_graceful_restart(tmp_path):
    first = EmbeddedValkey(tmp_path / "data").start()
    try:
        expected = await build_state(first.url)
    finally:
        first.stop()
    second = EmbeddedValkey(tmp_path / "data").start()
    try:
        await check_state(second.url, expected)
    finally:
        second.stop()


async def test_state_survives_sigkill_with_appendfsync_always(tmp_path):
    first = EmbeddedValkey(tmp_path / "data", appendfsync="always").start()
    try:
        expected = await build_state(first.url)
    finally:
        first.kill()
    assert first._process is None
    second = EmbeddedValkey(tmp_path / "data", appendfsync="always").start()
    try:
        await check_state(second.url, expected)
    finally:
        second.stop()


async def test_a_restarted_server_has_no_scripts_but_the_store_reloads_them(tmp_path):
    server = EmbeddedValkey(tmp_path / "data").start()
    try:
        async with Redis.from_url(server.url, decode_responses=True) as client:
            store = Store(client, prefix=PREFIX)
            await store.register("p", key_set_size=2)
            lease = await store.grant("p", "w")
        server.stop()
        server.start()  # same port, same data, an empty script cache
        async with Redis.from_url(server.url, decode_responses=True) as client:
            store = Store(client, prefix=PREFIX)
            shas = [s.sha for s in store.scripts._scripts.values()]
            assert not any(await client.script_exists(*shas))
            assert (await store.release(lease.external_id)).key == lease.key
            await store.check_ready()
            assert all(await client.script_exists(*shas))
    finally:
        server.stop()
