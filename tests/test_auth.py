"""API tokens: admin and worker rights, process limits, hashes only, open health checks."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from coordinator.app import create_app
from coordinator.auth import TokenTable, new_token
from coordinator.config import ConfigError, Settings
from coordinator.embedded import free_port
from tests.conftest import serve
from tests.test_serve import _env, serving

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
ADMIN, ADMIN_LINE = new_token("admin")
WORKER, WORKER_LINE = new_token("worker")
LIMITED, LIMITED_LINE = new_token("worker", "allowed-*")


@pytest.fixture
async def guarded(redis: Redis, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with three tokens configured (one in the variable, two in a file's worth)."""
    tokens = f"{ADMIN_LINE};{WORKER_LINE}\n{LIMITED_LINE}  # limited to allowed-*"
    async with serve(_app(redis, prefix, tokens)) as client:
        yield client


def _app(redis: Redis, prefix: str, tokens: str) -> Starlette:
    return create_app(Settings(key_prefix=prefix, tokens=tokens), redis=redis)


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer wrong-token", f"Basic {ADMIN}", ADMIN],
    # Named, not shown: the tokens are new each run, and parallel runs must collect alike.
    ids=["none", "bearer-alone", "wrong-token", "basic-scheme", "no-scheme"],
)
async def test_no_valid_token_is_401(guarded: httpx.AsyncClient, authorization) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await guarded.get(API, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_the_stored_hash_is_not_a_token(guarded: httpx.AsyncClient) -> None:
    stored = ADMIN_LINE.split()[0].removeprefix("sha256:")
    assert stored == hashlib.sha256(ADMIN.encode()).hexdigest()
    response = await guarded.get(API, headers=_as(stored))
    assert response.status_code == 401


async def test_health_and_the_document_stay_open(guarded: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await guarded.get(path)).status_code == 200


async def test_admin_may_do_everything(guarded: httpx.AsyncClient) -> None:
    created = await guarded.post(API, json={"process_name": "p"}, headers=_as(ADMIN))
    assert created.status_code == 201
    key = await guarded.post(
        f"{API}/batch_keys", json={"process_name": "p", "machine": "m"}, headers=_as(ADMIN)
    )
    assert key.status_code == 201
    released = await guarded.delete(
        f"{API}/batch_keys/{key.json()['external_id']}", headers=_as(ADMIN)
    )
    assert released.status_code == 200
    assert (await guarded.delete(f"{API}/p", headers=_as(ADMIN))).status_code == 200


async def test_a_worker_leases_but_may_not_register_or_delete(
    guarded: httpx.AsyncClient,
) -> None:
    refused = await guarded.post(API, json={"process_name": "w"}, headers=_as(WORKER))
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    await guarded.post(API, json={"process_name": "w"}, headers=_as(ADMIN))
    assert (await guarded.get(API, headers=_as(WORKER))).status_code == 200
    assert (await guarded.get(f"{API}/batch_keys/w", headers=_as(WORKER))).status_code == 200
    key = await guarded.post(
        f"{API}/batch_keys", json={"process_name": "w", "machine": "m"}, headers=_as(WORKER)
    )
    assert key.status_code == 201
    lease = f"{API}/batch_keys/{key.json()['external_id']}"
    assert (await guarded.patch(lease, headers=_as(WORKER))).status_code == 200
    assert (await guarded.delete(lease, headers=_as(WORKER))).status_code == 200
    deleted = await guarded.delete(f"{API}/w", headers=_as(WORKER))
    assert deleted.status_code == 403
    assert (await guarded.get(API, headers=_as(ADMIN))).json()[0]["process_name"] == "w"


async def test_a_limited_token_sees_and_touches_only_its_processes(
    guarded: httpx.AsyncClient,
) -> None:
    for name in ("allowed-1", "other"):
        await guarded.post(API, json={"process_name": name}, headers=_as(ADMIN))
    listed = await guarded.get(API, headers=_as(LIMITED))
    assert [p["process_name"] for p in listed.json()] == ["allowed-1"]
    assert (await guarded.get(f"{API}/batch_keys/other", headers=_as(LIMITED))).status_code == 403
    refused = await guarded.post(
        f"{API}/batch_keys", json={"process_name": "other", "machine": "m"}, headers=_as(LIMITED)
    )
    assert refused.status_code == 403
    mine = await guarded.post(
        f"{API}/batch_keys", json={"process_name": "allowed-1", "machine": "m"},
        headers=_as(LIMITED),
    )  # fmt: skip
    assert mine.status_code == 201
    theirs = await guarded.post(
        f"{API}/batch_keys", json={"process_name": "other", "machine": "m"}, headers=_as(ADMIN)
    )
    other_lease = f"{API}/batch_keys/{theirs.json()['external_id']}"
    # A lease outside the token's processes answers as one never granted.
    assert (await guarded.patch(other_lease, headers=_as(LIMITED))).status_code == 404
    assert (await guarded.delete(other_lease, headers=_as(LIMITED))).status_code == 404
    # Refusals changed nothing: the other process's lease is still held.
    keys = (await guarded.get(f"{API}/batch_keys/other", headers=_as(ADMIN))).json()
    assert keys[0]["external_id"] == theirs.json()["external_id"]
    own_lease = f"{API}/batch_keys/{mine.json()['external_id']}"
    assert (await guarded.delete(own_lease, headers=_as(LIMITED))).status_code == 200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sha256:abc worker", "line 1"),
        (f"{'#comment'}\nsha256:{'0' * 64} root", "line 2: the role"),
        (f"sha256:{'z' * 64} admin", "not hex"),
        (f"md5:{'0' * 64} admin", "expected"),
    ],
)
def test_a_malformed_token_line_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TokenTable.parse(text)


def test_serve_refuses_an_open_api_beyond_loopback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "serve", "--host", "0.0.0.0",
         "--port", str(free_port())],
        env=_env(tmp_path / "data", COORDINATOR_REDIS_URL="memory://"),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--insecure-open" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "data").exists()


def test_serve_binds_beyond_loopback_with_tokens_and_cli_uses_them(tmp_path: Path) -> None:
    created = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "token", "create", "--role", "admin"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    lines = created.stdout.splitlines()
    token = lines[0].removeprefix("token: ")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(lines[-1] + "\n")
    assert token not in tokens_file.read_text()
    env = _env(
        tmp_path / "data", COORDINATOR_REDIS_URL="memory://",
        COORDINATOR_TOKENS_FILE=str(tokens_file),
    )  # fmt: skip
    with serving(env, "--host", "0.0.0.0") as served:
        assert httpx.get(f"{served.base}{API}").status_code == 401
        cli = [sys.executable, "-m", "coordinator.cli"]
        ok = subprocess.run(
            [*cli, "process", "register", "tok", "--url", served.base, "--token", token],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        refused = subprocess.run(
            [*cli, "process", "list", "--url", served.base],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert refused.returncode == 1
        assert refused.stderr.startswith("coordinator: ")
