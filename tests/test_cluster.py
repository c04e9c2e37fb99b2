"""The service on a 3-primary Valkey Cluster: each process in one slot, every route unchanged."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.embedded import EmbeddedValkey, free_port, server_binary
from coordinator.keys import KeySpace
from tests.conftest import serve

pytestmark = pytest.mark.anyio


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a valid, free port too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three primaries from the embedded binary on loopback, slots split by valkey-cli."""
    nodes = [
        EmbeddedValkey(
            tmp_path_factory.mktemp(f"node{n}"),
            port=_cluster_port(),
            extra_args=("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
        )
        for n in range(3)
    ]
    for node in nodes:
        node.start()
    try:
        cli = Path(server_binary()).with_name("valkey-cli")
        subprocess.run(
            [str(cli), "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for node in nodes:  # poll each node's own view until the cluster is whole
            client = redis.Redis(port=node.port, decode_responses=True)
            deadline = time.monotonic() + 30
            while client.cluster("info").get("cluster_state") != "ok":
                assert time.monotonic() < deadline, "the cluster never became ok"
                time.sleep(0.05)
            client.close()
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
async def cluster_client(cluster: str) -> AsyncIterator[RedisCluster]:
    client = connect(cluster, Settings())
    assert isinstance(client, RedisCluster)
    async with client:
        yield client


@pytest.fixture
async def http(cluster_client: RedisCluster) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    async with serve(create_app(Settings(key_prefix=prefix), redis=cluster_client)) as client:
        yield client, prefix


API = "/api/v1/process"


async def test_fifty_processes_spread_over_all_primaries(
    http: tuple[httpx.AsyncClient, str], cluster_client: RedisCluster
) -> None:
    client, prefix = http
    names = [f"job-{n:02d}" for n in range(50)]
    for name in names:
        response = await client.post(API, json={"process_name": name, "key_set_size": 4})
        assert response.status_code == 201, response.text
        granted = await client.post(
            f"{API}/batch_keys", json={"process_name": name, "machine": "m"}
        )
        assert granted.status_code == 201, granted.text
    listed = await client.get(API)
    assert [p["process_name"] for p in listed.json()] == names
    keys = KeySpace(prefix)
    owners = {cluster_client.get_node_from_key(keys.process(n).meta).name for n in names}
    assert len(owners) == 3, owners
    # Every key of one process lives on the node that owns its slot.
    for name in names[:5]:
        k = keys.process(name)
        slots = {cluster_client.keyslot(key) for key in (k.meta, k.free, k.held, k.leases,
                                                          k.tokens, k.fence, k.freed)}  # fmt: skip
        assert len(slots) == 1


async def test_the_core_cycle_runs_unchanged(http: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = http
    assert (
        await client.post(API, json={"process_name": "cycle", "key_set_size": 2})
    ).status_code == 201
    assert (await client.post(API, json={"process_name": "cycle"})).status_code == 409
    first = (
        await client.post(f"{API}/batch_keys", json={"process_name": "cycle", "machine": "a"})
    ).json()
    second = (
        await client.post(f"{API}/batch_keys", json={"process_name": "cycle", "machine": "b"})
    ).json()
    assert (first["key"], second["key"]) == (0, 1)
    full = await client.post(f"{API}/batch_keys", json={"process_name": "cycle", "machine": "c"})
    assert full.status_code == 409
    renewed = await client.patch(
        f"{API}/batch_keys/{first['external_id']}", json={"lease_seconds": 90}
    )
    assert renewed.status_code == 200
    released = await client.delete(f"{API}/batch_keys/{first['external_id']}")
    assert released.json()["last_completed_at"] is not None
    assert (await client.delete(f"{API}/batch_keys/{first['external_id']}")).status_code == 410
    listing = (await client.get(f"{API}/batch_keys/cycle")).json()
    assert [row["machine"] for row in listing] == [None, "b"]
    assert (await client.delete(f"{API}/cycle")).status_code == 200
    assert (await client.patch(f"{API}/batch_keys/{second['external_id']}")).status_code == 410
    assert (await client.get(f"{API}/batch_keys/cycle")).status_code == 404


async def test_a_waiting_request_is_woken_by_a_release(http: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = http
    await client.post(API, json={"process_name": "wait", "key_set_size": 1})
    held = (
        await client.post(f"{API}/batch_keys", json={"process_name": "wait", "machine": "a"})
    ).json()
    waiter = asyncio.create_task(client.post(
        f"{API}/batch_keys", json={"process_name": "wait", "machine": "b", "wait_seconds": 10}
    ))  # fmt: skip
    await asyncio.sleep(0.05)
    await client.delete(f"{API}/batch_keys/{held['external_id']}")
    granted = await waiter
    assert granted.status_code == 201
    assert granted.json()["machine"] == "b"


async def test_a_flushed_script_cache_is_reloaded_on_every_node(
    http: tuple[httpx.AsyncClient, str], cluster_client: RedisCluster
) -> None:
    client, _ = http
    await client.post(API, json={"process_name": "flush", "key_set_size": 1})
    await cluster_client.script_flush()
    assert (await client.get("/readyz")).status_code == 200
    granted = await client.post(f"{API}/batch_keys", json={"process_name": "flush", "machine": "m"})
    assert granted.status_code == 201
