"""A Redis error reply that means "not now" is the store's failure, never the caller's.

OOM (maxmemory under noeviction), NOREPLICAS (min-replicas-to-write), BUSY (a long script),
and the other codes of `coordinator.unavailable` answer 503 `store_unavailable` with
Retry-After, on a connection the server keeps, and are logged; the Python clients raise
StoreUnavailable. A reply that comes from a bug (WRONGTYPE, a script error) stays a 500.
Every server-side case runs on a private Valkey, whose configuration the test changes.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, ResponseError

from coordinator.app import create_app
from coordinator.client.direct import AsyncRedisCoordinator
from coordinator.client.http import AsyncHttpCoordinator
from coordinator.client.sync import HttpCoordinator
from coordinator.config import Settings
from coordinator.embedded import EmbeddedValkey
from coordinator.errors import CoordinatorError, StoreUnavailable
from coordinator.unavailable import is_unavailable
from tests.conftest import serve
from tests.test_serve import _env, serving

pytestmark = pytest.mark.anyio

API = "/api/v1/process"

# (setting, value while refusing): each makes a write script fail with a "not now" reply.
REFUSING = {"OOM": ("maxmemory", "1"), "NOREPLICAS": ("min-replicas-to-write", "1")}


@pytest.fixture(scope="module")
def private_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(tmp_path_factory.mktemp("unavailable")) as server:
        yield server


@pytest.fixture
def config(private_valkey: EmbeddedValkey) -> Iterator[Callable[[str, str], None]]:
    """Set a configuration value of the private Valkey, restored after the test."""
    client = sync_redis.Redis(port=private_valkey.port, decode_responses=True)
    changed: dict[str, str] = {}

    def set_config(name: str, value: str) -> None:
        changed.setdefault(name, client.config_get(name)[name])
        client.config_set(name, value)

    yield set_config
    for name, value in changed.items():
        client.config_set(name, value)
    client.close()


def _request(
    conn: socket.socket, method: str, path: str, body: dict[str, object]
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a kept-alive socket; (status, headers, body)."""
    payload = json.dumps(body).encode()
    conn.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "the server closed the connection"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


@pytest.mark.parametrize("reply", sorted(REFUSING))
def test_a_refusing_redis_answers_503_on_a_kept_connection(
    reply: str,
    private_valkey: EmbeddedValkey,
    config: Callable[[str, str], None],
    tmp_path: Path,
    new_name: Callable[[], str],
) -> None:
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL=private_valkey.url)
    name = new_name()
    with serving(env) as served:
        port = int(served.base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            status, _, _ = _request(conn, "POST", API, {"process_name": name})
            assert status == 201
            config(*REFUSING[reply])
            status, headers, body = _request(
                conn, "POST", f"{API}/batch_keys", {"process_name": name, "machine": "m"}
            )
            assert status == 503, body
            assert headers["content-type"] == "application/problem+json"
            assert int(headers["retry-after"]) >= 1
            problem = json.loads(body)
            assert problem["code"] == "store_unavailable"
            assert reply in problem["detail"]
            config(REFUSING[reply][0], "0")
            # The same connection serves the next request: it was not dropped.
            status, _, body = _request(
                conn, "POST", f"{API}/batch_keys", {"process_name": name, "machine": "m"}
            )
            assert status == 201, body
        # Both requests are in the request log, the failure with its status.
        for _ in range(100):  # each line is written just after its answer: poll for it
            statuses = [
                json.loads(line)["status"]
                for line in served.log.splitlines()
                if line.startswith("{") and '"route":"/api/v1/process/batch_keys"' in line
            ]
            if len(statuses) == 2:
                break
            time.sleep(0.05)
        assert statuses == [503, 201]


@pytest.fixture
async def app_client(
    private_valkey: EmbeddedValkey, prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    redis = Redis.from_url(private_valkey.url, decode_responses=True)
    async with redis, serve(create_app(Settings(key_prefix=prefix), redis=redis)) as client:
        yield client


async def test_a_busy_server_answers_503_then_recovers(
    app_client: httpx.AsyncClient,
    private_valkey: EmbeddedValkey,
    config: Callable[[str, str], None],
    new_name: Callable[[], str],
) -> None:
    name = new_name()
    assert (await app_client.post(API, json={"process_name": name})).status_code == 201
    config("busy-reply-threshold", "50")
    started = threading.Event()
    spin = (
        "local t0 = redis.call('TIME') local s0 = tonumber(t0[1]) + tonumber(t0[2]) / 1e6 "
        "while true do local t = redis.call('TIME') "
        "if tonumber(t[1]) + tonumber(t[2]) / 1e6 - s0 > 1.0 then return 1 end end"
    )

    def long_script() -> None:
        with sync_redis.Redis(port=private_valkey.port, socket_timeout=10) as other:
            started.set()
            other.eval(spin, 0)

    runner = threading.Thread(target=long_script)
    runner.start()
    try:
        started.wait(5)
        # Poll until the script has passed the threshold and Valkey answers BUSY.
        for _ in range(100):
            response = await app_client.post(
                f"{API}/batch_keys", json={"process_name": name, "machine": "m"}
            )
            if response.status_code != 201:
                break
            await app_client.delete(f"{API}/batch_keys/{response.json()['external_id']}")
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "store_unavailable"
        assert "BUSY" in response.json()["detail"]
        assert response.headers["Retry-After"] == "1"
    finally:
        runner.join(10)
    granted = await app_client.post(
        f"{API}/batch_keys", json={"process_name": name, "machine": "m"}
    )
    assert granted.status_code == 201


def test_a_bug_reply_stays_a_500(
    private_valkey: EmbeddedValkey, tmp_path: Path, new_name: Callable[[], str]
) -> None:
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL=private_valkey.url)
    name = new_name()
    with serving(env) as served, sync_redis.Redis(port=private_valkey.port) as redis:
        assert httpx.post(f"{served.base}{API}", json={"process_name": name}).status_code == 201
        # A key of the wrong type where the process's free set should be: WRONGTYPE is a bug
        # (or damage), not a moment to wait out.
        redis.set(f"bpc:{{{name}}}:free", "not a sorted set")
        response = httpx.post(
            f"{served.base}{API}/batch_keys", json={"process_name": name, "machine": "m"}
        )
        assert response.status_code == 500
        assert response.json()["code"] == "internal_error"
        assert "WRONGTYPE" in served.log
        # The client says so at once: a fault is not an outage to ride out for the budget.
        with HttpCoordinator(served.base, outage_budget_seconds=60) as client:
            began = time.monotonic()
            with pytest.raises(CoordinatorError, match="500 internal_error") as raised:
                client.acquire(name, "m")
            assert not isinstance(raised.value, StoreUnavailable)
            assert time.monotonic() - began < 10


async def test_the_python_clients_raise_store_unavailable(
    private_valkey: EmbeddedValkey,
    config: Callable[[str, str], None],
    prefix: str,
    new_name: Callable[[], str],
    tmp_path: Path,
) -> None:
    name = new_name()
    # A refusal that lasts is retried for the outage budget, then raised: a short budget here.
    direct = AsyncRedisCoordinator(private_valkey.url, prefix=prefix, outage_budget_seconds=0.5)
    try:
        await direct.register(name, 2)
        config("min-replicas-to-write", "1")
        with pytest.raises(StoreUnavailable, match="NOREPLICAS"):
            await direct.acquire(name, "m")
        config("min-replicas-to-write", "0")
        config("maxmemory", "1")
        with pytest.raises(StoreUnavailable, match="OOM"):
            await direct.acquire(name, "m")
    finally:
        await direct.aclose()
    env = _env(
        tmp_path / "data", COORDINATOR_REDIS_URL=private_valkey.url, COORDINATOR_KEY_PREFIX=prefix
    )
    with serving(env) as served:
        over_http = AsyncHttpCoordinator(served.base, outage_budget_seconds=0.5)
        try:
            with pytest.raises(StoreUnavailable, match="OOM"):
                await over_http.acquire(name, "m")
        finally:
            await over_http.aclose()


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (ResponseError("MISCONF Errors writing to the AOF file: No space left on device"), True),
        (BusyLoadingError("Valkey is loading the dataset in memory"), True),
        (ResponseError("MASTERDOWN Link with MASTER is down"), True),
        (ResponseError("UNBLOCKED force unblock from blocking operation"), True),
        (ResponseError("BUSYKEY Target key name already exists."), False),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (ResponseError("ERR user_script:1: Script attempted to access nonexistent global"), False),
        (ResponseError("NOPERM User has no permissions to run the 'get' command"), False),
    ],
)
def test_error_replies_are_told_apart_by_their_code(error: Exception, unavailable: bool) -> None:
    assert is_unavailable(error) is unavailable
