"""A Redis that may evict keys is refused: by `coordinator serve` at start, by /readyz after.

Each test runs on a private Valkey (never the session one), whose policy it sets itself.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.embedded import EmbeddedValkey, free_port
from coordinator.eviction import eviction_policy
from tests.conftest import serve
from tests.test_cluster import cluster  # noqa: F401 - the three-primary cluster fixture

COORDINATOR = str(Path(sys.executable).with_name("coordinator"))


@pytest.fixture(scope="module")
def private_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """A Valkey of this module's own, started the way a shared cache Redis is configured."""
    folder = tmp_path_factory.mktemp("evicting")
    with EmbeddedValkey(folder, extra_args=["--maxmemory-policy", "allkeys-lru"]) as server:
        yield server


@pytest.fixture
def set_policy(private_valkey: EmbeddedValkey) -> Iterator[Callable[[str], None]]:
    """Set the private Valkey's maxmemory-policy; it is put back to noeviction afterwards."""
    admin = redis.Redis(port=private_valkey.port, decode_responses=True)
    yield lambda policy: admin.config_set("maxmemory-policy", policy)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.close()


@pytest.fixture
def no_config_url(private_valkey: EmbeddedValkey) -> Iterator[str]:
    """The URL of a user allowed everything but CONFIG, as on a managed Redis."""
    user, password = f"nocfg-{secrets.token_hex(4)}", secrets.token_hex(16)
    with redis.Redis(port=private_valkey.port) as admin:
        admin.acl_setuser(
            user, enabled=True, passwords=[f"+{password}"], keys="*", channels="*",
            categories=["+@all"], commands=["-config"],
        )  # fmt: skip
        yield f"redis://{user}:{password}@127.0.0.1:{private_valkey.port}/0"
        admin.acl_deluser(user)


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    env["COORDINATOR_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def test_serve_refuses_a_redis_that_may_evict(
    private_valkey: EmbeddedValkey, set_policy: Callable[[str], None], tmp_path: Path
) -> None:
    set_policy("allkeys-lru")
    result = subprocess.run(
        [COORDINATOR, "serve", "--port", str(free_port())],
        env=_env(tmp_path / "data", COORDINATOR_REDIS_URL=private_valkey.url),
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()  # uvicorn never started
    assert line.startswith("coordinator: ")
    assert "maxmemory-policy allkeys-lru" in line
    assert "noeviction" in line


@pytest.mark.anyio
async def test_readyz_answers_503_while_redis_may_evict(
    private_valkey: EmbeddedValkey, set_policy: Callable[[str], None], prefix: str
) -> None:
    set_policy("noeviction")
    async with (
        Redis.from_url(private_valkey.url, decode_responses=True) as client,
        serve(create_app(Settings(key_prefix=prefix), redis=client)) as http,
    ):
        assert (await http.get("/readyz")).status_code == 200
        for policy in ("allkeys-lru", "volatile-ttl"):
            set_policy(policy)
            refused = await http.get("/readyz")
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["code"] == "store_unavailable"
            assert f"maxmemory-policy {policy}" in refused.json()["detail"]
        set_policy("noeviction")
        assert (await http.get("/readyz")).status_code == 200


@pytest.mark.anyio
async def test_unreadable_policy_warns_once_and_stays_ready(
    no_config_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Redis.from_url(no_config_url, decode_responses=True) as limited:
        with pytest.raises(NoPermissionError):
            await limited.config_get("maxmemory-policy")
        assert await eviction_policy(limited) is None
        with caplog.at_level(logging.WARNING, logger="coordinator"):
            async with serve(create_app(Settings(key_prefix=prefix), redis=limited)) as http:
                for _ in range(3):
                    assert (await http.get("/readyz")).status_code == 200
    warnings = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


def test_serve_starts_when_the_policy_cannot_be_read(no_config_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL=no_config_url)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [COORDINATOR, "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "coordinator serve did not become ready"
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(30)
    # Not refused at start; /readyz warned once, however often it was asked.
    warnings = [line for line in log.read_text().splitlines() if "maxmemory-policy" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("WARNING:")


@pytest.mark.anyio
async def test_every_cluster_primary_is_read(cluster: str) -> None:  # noqa: F811 - the fixture
    client = connect(cluster, Settings())
    assert isinstance(client, RedisCluster)
    async with client:
        assert await eviction_policy(client) == "noeviction"
        last = client.get_primaries()[-1]
        await client.config_set("maxmemory-policy", "allkeys-lru", target_nodes=last)
        try:
            assert await eviction_policy(client) == "allkeys-lru"
        finally:
            await client.config_set("maxmemory-policy", "noeviction", target_nodes=last)
