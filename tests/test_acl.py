"""The ACL users of docs/scripts.md: enough for the service's work, refused everything else.

The rules are read from the document's own code blocks, so the document cannot drift from what
is tested. Each test creates its users on the session Valkey under its own prefix and deletes
them afterwards.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.embedded import EmbeddedValkey
from coordinator.models import epoch_us
from coordinator.scripts import sources
from coordinator.store import Store
from tests.conftest import serve

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parent.parent / "docs" / "scripts.md"
ROLES = ("worker", "admin")
TOKEN_EPOCH_US = 1_767_225_600_000_000  # grant.lua: tokens count microseconds from 2026-01-01


def next_token(previous: int | None, started_us: int | None) -> int:
    """The token grant.lua issues after `previous`, at the Redis TIME it granted at."""
    assert previous is not None
    assert started_us is not None
    return max(previous + 1, started_us - TOKEN_EPOCH_US)


def doc_rules(role: str, prefix: str, user: str, password: str) -> list[str]:
    """The `ACL SETUSER` arguments of the document's block for `role`, for this prefix."""
    text = DOC.read_text()
    start = text.index(f"<!-- acl:{role} -->")
    opening = text.index("```sh\n", start) + len("```sh\n")
    block = text[opening : text.index("\n```", opening)]
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:4] == ["valkey-cli", "ACL", "SETUSER", f"bpc-{role}"], words[:4]
    rules = [
        f">{password}" if word.startswith(">") else word.replace("~bpc:", f"~{prefix}:")
        for word in words[4:]
    ]
    assert all("bpc" not in rule for rule in rules), rules
    return [user, *rules]


class Users:
    """The document's users, created on the session Valkey; connect as one with `client`."""

    def __init__(self, valkey: EmbeddedValkey, prefix: str) -> None:
        self.valkey = valkey
        self.prefix = prefix
        self.passwords = {role: secrets.token_hex(16) for role in ROLES}

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def client(self, role: str) -> Redis:
        return Redis(
            host="127.0.0.1",
            port=self.valkey.port,
            username=self.name(role),
            password=self.passwords[role],
            decode_responses=True,
        )


@pytest.fixture
async def users(valkey: EmbeddedValkey, valkey_redis: Redis, prefix: str) -> AsyncIterator[Users]:
    made = Users(valkey, prefix)
    try:
        for role in ROLES:
            rules = doc_rules(role, prefix, made.name(role), made.passwords[role])
            assert await valkey_redis.execute_command("ACL", "SETUSER", *rules) in ("OK", True)
        yield made
    finally:
        await valkey_redis.execute_command("ACL", "DELUSER", *(made.name(r) for r in ROLES))


async def test_the_users_exist_as_documented(users: Users, valkey_redis: Redis) -> None:
    worker = await valkey_redis.acl_getuser(users.name("worker"))
    assert worker["enabled"]
    assert sorted(worker["keys"]) == sorted(
        [f"%R~{users.prefix}:*"]
        + [
            f"~{users.prefix}:{{*}}:{part}"
            for part in (
                *("meta", "free", "held", "leases", "tokens", "fence", "freed", "events"),
                *("keyinfo", "parked", "passes", "ended"),
            )
        ]
    )
    admin = await valkey_redis.acl_getuser(users.name("admin"))
    assert admin["keys"] == [f"~{users.prefix}:*"]
    for user in (worker, admin):
        assert user["channels"] == []
        assert user["categories"] == ["-@all"]
    for role in ROLES:
        async with users.client(role) as client:
            assert await client.ping()
            connected = {c["user"] for c in await valkey_redis.client_list()}
            assert users.name(role) in connected


async def test_admin_runs_a_process_from_register_to_delete(users: Users, prefix: str) -> None:
    async with users.client("admin") as admin:
        store = Store(admin, prefix=prefix)
        await store.check_ready()  # SCRIPT EXISTS, SCRIPT LOAD of any missing, one EVALSHA
        registered = await store.register("acl-admin", 2, lease_seconds=60)
        assert (registered.key_set_size, registered.lease_seconds) == (2, 60)
        assert [p.process_name for p in await store.processes()] == ["acl-admin"]
        lease = await store.grant("acl-admin", "admin-host")
        assert (lease.key, lease.fencing_token) == (0, next_token(0, epoch_us(lease.started_at)))
        fence = store.keys.process("acl-admin").fence
        assert await admin.get(fence) == str(lease.fencing_token)
        renewed = await store.renew(lease.external_id or "", 120)
        assert renewed.expires_at is not None
        assert lease.expires_at is not None
        assert renewed.expires_at > lease.expires_at
        released = await store.release(lease.external_id or "")
        assert released.last_completed_at is not None
        keys = await store.batch_keys("acl-admin")
        assert [k.last_completed_at for k in keys] == [released.last_completed_at, None]
        deleted = await store.unregister("acl-admin")
        assert deleted.key_set_size == 2
        assert await store.processes() == []


async def test_worker_leases_and_waits_but_cannot_register_or_delete(
    users: Users, prefix: str
) -> None:
    async with users.client("admin") as admin, users.client("worker") as worker:
        admin_store = Store(admin, prefix=prefix)
        await admin_store.register("acl-worker", 1, lease_seconds=60)
        store = Store(worker, prefix=prefix)

        assert [p.process_name for p in await store.processes()] == ["acl-worker"]
        assert (await store.process("acl-worker")).key_set_size == 1
        # A worker may load the scripts itself (reload on NOSCRIPT), and check them.
        grant = sources()["grant"]
        assert await worker.script_load(grant) == hashlib.sha1(grant.encode()).hexdigest()
        assert await store.scripts.load_missing() == 0

        first = await store.grant("acl-worker", "w1")
        assert first.fencing_token == next_token(0, epoch_us(first.started_at))
        assert (await store.renew(first.external_id or "", 90)).expires_at is not None
        assert [k.machine for k in await store.batch_keys("acl-worker")] == ["w1"]

        # A second worker waits in BLPOP on the freed list; the release wakes it.
        async def release_soon() -> None:
            await anyio.sleep(0.2)
            await store.release(first.external_id or "")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(release_soon)
            with anyio.fail_after(5):
                second = await store.grant("acl-worker", "w2", wait_seconds=5)
        assert (second.key, second.machine) == (0, "w2")
        assert second.fencing_token == next_token(first.fencing_token, epoch_us(second.started_at))
        fence = store.keys.process("acl-worker").fence
        assert await worker.get(fence) == str(second.fencing_token)
        failed = await store.release(second.external_id or "", "failed")
        assert failed.key == 0

        with pytest.raises(NoPermissionError):
            await store.register("acl-not-mine", 1)
        with pytest.raises(NoPermissionError):
            await store.unregister("acl-worker")
        with pytest.raises(NoPermissionError):
            await worker.zadd(f"{prefix}:{{registry}}:processes", {"forged": 0})
        with pytest.raises(NoPermissionError):
            await worker.hset(f"{prefix}:{{registry}}:pids", "0" * 16, "forged")
        # Refused before doing anything: the process is intact and alone.
        assert [p.process_name for p in await admin_store.processes()] == ["acl-worker"]
        assert await admin.hget(f"{prefix}:{{registry}}:pids", "0" * 16) is None


Refusal = Callable[[Redis], Awaitable[Any]]

REFUSED: dict[str, Refusal] = {
    "FLUSHALL": lambda r: r.flushall(),
    "FLUSHDB": lambda r: r.flushdb(),
    "CONFIG GET": lambda r: r.config_get("*"),
    "CONFIG SET": lambda r: r.config_set("slowlog-max-len", "128"),
    "KEYS": lambda r: r.keys("*"),
    "SCAN": lambda r: r.scan(0),
    "EVAL": lambda r: r.eval("return 1", 0),
    "SCRIPT FLUSH": lambda r: r.script_flush(),
    "ACL LIST": lambda r: r.acl_list(),
    "FUNCTION LIST": lambda r: r.function_list(),
    "PUBLISH": lambda r: r.publish(f"channel-{secrets.token_hex(4)}", "x"),
}


@pytest.mark.parametrize("role", ROLES)
async def test_everything_else_is_refused(
    users: Users, valkey_redis: Redis, prefix: str, role: str
) -> None:
    outside = f"not-{prefix}:{{x}}:meta"
    other_service = f"{prefix}x:{{registry}}:processes"  # a longer prefix is another service
    await valkey_redis.set(outside, "untouched")
    try:
        async with users.client(role) as client:
            for command, call in REFUSED.items():
                with pytest.raises(NoPermissionError):
                    await call(client)
                    pytest.fail(f"{command} was allowed")
            with pytest.raises(NoPermissionError):
                await client.get(outside)
            with pytest.raises(NoPermissionError):
                await client.set(outside, "changed")
            with pytest.raises(NoPermissionError):
                await client.zrange(other_service, 0, -1)
            with pytest.raises(NoPermissionError):
                await client.delete(f"{prefix}:{{p}}:meta")
            # A loaded script cannot reach outside either: as KEYS, nor from inside.
            sha = await client.script_load("return redis.call('GET', KEYS[1] or ARGV[1])")
            with pytest.raises(NoPermissionError):
                await client.evalsha(sha, 1, outside)
            with pytest.raises(ResponseError, match=r"(?i)\bpermissions\b"):
                await client.evalsha(sha, 0, outside)
            with pytest.raises(ResponseError, match=r"(?i)\bpermissions\b"):
                await client.evalsha(await client.script_load("return redis.call('FLUSHALL')"), 0)
        assert await valkey_redis.get(outside) == "untouched"
        assert await valkey_redis.ping()
    finally:
        await valkey_redis.delete(outside)


async def test_the_http_api_runs_as_the_admin_user(users: Users, prefix: str) -> None:
    async with (
        users.client("admin") as admin,
        serve(create_app(Settings(key_prefix=prefix), redis=admin)) as http,
    ):
        assert (await http.get("/readyz")).status_code == 200
        body = {"process_name": "acl-api", "key_set_size": 2}
        assert (await http.post("/api/v1/process", json=body)).status_code == 201
        grant = {"process_name": "acl-api", "machine": "m", "lease_seconds": 30}
        response = await http.post("/api/v1/process/batch_keys", json=grant)
        assert response.status_code == 201, response.text
        external_id = response.json()["external_id"]
        url = f"/api/v1/process/batch_keys/{external_id}"
        assert (await http.patch(url, json={"lease_seconds": 60})).status_code == 200
        assert (await http.delete(url)).status_code == 200
        keys = (await http.get("/api/v1/process/batch_keys/acl-api")).json()
        assert keys[0]["last_completed_at"] is not None
        assert (await http.delete("/api/v1/process/acl-api")).status_code == 200
        assert (await http.get("/api/v1/process")).json() == []


def test_a_waiting_worker_sends_only_commands_its_user_may_run() -> None:
    """Waiting grants poll and give signals back only with commands the worker user has
    (a pushback with LPUSH once failed, at random, as this user: NOPERM)."""
    import ast  # noqa: PLC0415

    allowed = {
        rule[1:].split("|")[0].lower()
        for rule in doc_rules("worker", "t", "u", "p")
        if rule.startswith("+")
    }
    source = (Path(__file__).resolve().parent.parent / "coordinator" / "waiters.py").read_text()

    def receiver(node: ast.expr) -> str:
        return getattr(node, "attr", getattr(node, "id", ""))

    sent = {
        node.func.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and receiver(node.func.value) in {"redis", "pipe"}
    }
    commands = sent - {"execute", "pipeline"}
    assert {"blpop", "lpop", "rpush", "pexpire"} <= commands, commands
    assert commands <= allowed, commands - allowed
