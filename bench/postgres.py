"""What users build instead: the same grant + release cycle on a table of keys in PostgreSQL,
`SELECT … FOR UPDATE SKIP LOCKED`, beside ours on the direct path.

Debian's `postgresql` (its /usr/lib/postgresql/<version>/bin) runs a private cluster in a
temporary folder, on a unix socket only, started as the `postgres` user when we are root (root
may not run it). `synchronous_commit=off`, so a commit waits for no disk flush, as Valkey's
`appendfsync everysec` does not. The table, one row per key:

- grant: pick the stalest free key (never completed first, then the oldest completion) among
  the process's keys whose lease is absent or expired, skipping rows other transactions have
  locked, lease it (holder, expiry, a token from a sequence): one statement (`postgres`), or
  as often written, a transaction of that locking SELECT and then an UPDATE
  (`postgres_transaction`);
- release: only the holder's token ends the lease, stamping `last_completed_at`.

Both sides run `tasks` asyncio tasks on one client process (asyncpg: one connection per task,
as a query holds its connection; ours: AsyncRedisCoordinator, as bench/direct.py); server CPU
is each server's utime + stime (postgres: the postmaster and every backend) over the window.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from bench.direct import TaskRun, run_tasks
from coordinator.client import AsyncRedisCoordinator

SCHEMA = """
CREATE TABLE batch_key (
    process text NOT NULL,
    key integer NOT NULL,
    holder text,
    token bigint,
    lease_expires_at timestamptz,
    last_completed_at timestamptz,
    PRIMARY KEY (process, key)
);
-- The grant's order: never completed first, then the stalest completion.
CREATE INDEX batch_key_stalest ON batch_key (process, last_completed_at NULLS FIRST, key);
CREATE SEQUENCE fence;
"""

GRANT = """
UPDATE batch_key AS k
SET holder = $2, token = nextval('fence'), lease_expires_at = now() + $3 * interval '1 second'
FROM (
    SELECT process, key FROM batch_key
    WHERE process = $1 AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY last_completed_at NULLS FIRST, key
    LIMIT 1
    FOR UPDATE SKIP LOCKED
) AS free
WHERE k.process = free.process AND k.key = free.key
RETURNING k.key, k.token
"""

# The same grant as users often write it: a transaction of a locking read, then the lease.
PICK = """
SELECT key FROM batch_key
WHERE process = $1 AND (lease_expires_at IS NULL OR lease_expires_at < now())
ORDER BY last_completed_at NULLS FIRST, key
LIMIT 1
FOR UPDATE SKIP LOCKED
"""

LEASE = """
UPDATE batch_key
SET holder = $3, token = nextval('fence'), lease_expires_at = now() + $4 * interval '1 second'
WHERE process = $1 AND key = $2
RETURNING token
"""

RELEASE = """
UPDATE batch_key
SET holder = NULL, token = NULL, lease_expires_at = NULL, last_completed_at = now()
WHERE process = $1 AND key = $2 AND token = $3
"""

PROCESS = "pg"
LEASE_SECONDS = 600


def binaries() -> Path | None:
    """The newest installed Debian PostgreSQL's bin folder, or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    return found[-1].parent if found else None


def _as_owner(owner: str | None, command: list[str]) -> list[str]:
    return ["runuser", "-u", owner, "--", *command] if owner else command


@contextmanager
def cluster(port: int) -> Iterator[tuple[str, int]]:
    """A private PostgreSQL on a unix socket: yields (socket folder, postmaster pid)."""
    bindir = binaries()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
    # Root may not run postgres; its own user may not enter root's 0700 temporary folders.
    owner = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="bpc-bench-pg-"))
    if owner:
        shutil.chown(folder, owner, owner)
    data, log = folder / "data", folder / "postgres.log"
    options = (
        f"-k {folder} -p {port} -c listen_addresses='' -c synchronous_commit=off"
        " -c max_connections=200 -c shared_buffers=128MB"
    )
    run = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "bench", "--no-sync"]
    subprocess.run(_as_owner(owner, run), check=True, capture_output=True)  # noqa: S603
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w"]
    subprocess.run(_as_owner(owner, [*start, "start"]), check=True, capture_output=True)  # noqa: S603
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield str(folder), pid
    finally:
        stop = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_owner(owner, stop), check=False, capture_output=True)  # noqa: S603
        shutil.rmtree(folder, ignore_errors=True)


async def _pool(socket: str, port: int, tasks: int, keys: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        host=socket, port=port, user="bench", database="postgres", min_size=tasks, max_size=tasks
    )
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
        await conn.execute(
            "INSERT INTO batch_key (process, key) SELECT $1, g FROM generate_series(0, $2 - 1) g",
            PROCESS,
            keys,
        )
        await conn.execute("ANALYZE batch_key")
    return pool


async def side_by_side(
    url: str,
    valkey_pid: int,
    *,
    tasks: int,
    keys: int,
    warmup: float,
    duration: float,
    rounds: int,
) -> dict[str, list[TaskRun]]:
    """Ours and the table, `rounds` windows each, alternating."""
    port = 5432
    stats = Redis.from_url(url, decode_responses=True)
    coordinator = AsyncRedisCoordinator(url, prefix="bench-vs-pg")
    await coordinator.register(PROCESS, keys)
    counters = {"no_free_key": 0, "release_missed": 0}
    runs: dict[str, list[TaskRun]] = {"ours": [], "postgres": [], "postgres_transaction": []}

    async def ours() -> bool:
        key = await coordinator.acquire(PROCESS, "bench")
        await coordinator.release(key.external_id or "")
        return True

    with cluster(port) as (socket, postmaster):
        pool = await _pool(socket, port, tasks, keys)

        async def theirs() -> bool:
            async with pool.acquire() as conn:
                row = await conn.fetchrow(GRANT, PROCESS, "bench", LEASE_SECONDS)
                if row is None:
                    counters["no_free_key"] += 1
                    return False
                done = await conn.execute(RELEASE, PROCESS, row["key"], row["token"])
                if done != "UPDATE 1":
                    counters["release_missed"] += 1
                    return False
            return True

        async def in_transaction() -> bool:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    key = await conn.fetchval(PICK, PROCESS)
                    if key is None:
                        counters["no_free_key"] += 1
                        return False
                    token = await conn.fetchval(LEASE, PROCESS, key, "bench", LEASE_SECONDS)
                done = await conn.execute(RELEASE, PROCESS, key, token)
                if done != "UPDATE 1":
                    counters["release_missed"] += 1
                    return False
            return True

        client = {"client (bench process)": -os.getpid()}
        try:
            for _ in range(rounds):
                runs["ours"].append(
                    await run_tasks(
                        "ours (direct)",
                        ours,
                        tasks=tasks,
                        warmup=warmup,
                        duration=duration,
                        sides={**client, "server": valkey_pid},
                        stats=stats,
                    )
                )
                for side, cycle in (("postgres", theirs), ("postgres_transaction", in_transaction)):
                    runs[side].append(
                        await run_tasks(
                            side,
                            cycle,
                            tasks=tasks,
                            warmup=warmup,
                            duration=duration,
                            sides={**client, "server": postmaster},
                            stats=stats,
                            counters=counters,
                        )
                    )
        finally:
            await pool.close()
            await coordinator.unregister(PROCESS)
            await coordinator.aclose()
            await stats.aclose()
    return runs


def summary(runs: dict[str, list[TaskRun]], *, tasks: int, cores: int) -> dict[str, Any]:
    """Cycles/s, server and client CPU per cycle, and the one-process ceiling they imply."""
    bindir = binaries()
    out: dict[str, Any] = {
        "tasks": tasks,
        "server_cores": cores,
        "postgres_version": bindir.parent.name if bindir else "",
        "settings": "synchronous_commit=off, unix socket, one connection per task",
    }
    for side, side_runs in runs.items():
        cycles = sum(r.cycles for r in side_runs)
        server = sum(r.cpu.used["server"] for r in side_runs)
        client = sum(r.cpu.used["client (bench process)"] for r in side_runs)
        server_us = server * 1e6 / cycles
        out[side] = {
            "cycles": cycles,
            "cycles_per_second": cycles / sum(r.seconds for r in side_runs),
            "per_round_cycles_per_second": [round(r.per_second) for r in side_runs],
            "server_cpu_us_per_cycle": server_us,
            "client_cpu_us_per_cycle": client * 1e6 / cycles,
            "counters": {
                name: sum(r.counters.get(name, 0) for r in side_runs)
                for name in side_runs[0].counters
            },
            # What one core of the server can carry; Valkey runs a process's scripts on one
            # core (one slot), postgres spreads a table over every core it has.
            "cycles_per_server_core": 1e6 / server_us,
        }
    pg, ours = out["postgres"], out["ours"]
    for side in ("postgres", "postgres_transaction"):
        out[side]["ceiling_on_this_machine"] = out[side]["cycles_per_server_core"] * cores
    ours["ceiling_on_this_machine"] = ours["cycles_per_server_core"]
    out["ratio"] = ours["cycles_per_second"] / pg["cycles_per_second"]
    out["server_cpu_ratio"] = pg["server_cpu_us_per_cycle"] / ours["server_cpu_us_per_cycle"]
    # The core count at which the table's ceiling passes ours (one process, one Valkey core).
    out["cores_to_match_ours"] = ours["cycles_per_server_core"] / pg["cycles_per_server_core"]
    return out


def _main() -> None:
    """Alone: `python -m bench.postgres` on a private Valkey, a short run."""
    import json  # noqa: PLC0415 - only this entry point prints

    import psutil  # noqa: PLC0415

    from coordinator.embedded import EmbeddedValkey  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(Path(tmp) / "v") as valkey:
        pid = next(p.pid for p in psutil.Process().children() if "valkey" in p.name())
        runs = asyncio.run(
            side_by_side(valkey.url, pid, tasks=64, keys=128, warmup=1, duration=3, rounds=1)
        )
        print(json.dumps(summary(runs, tasks=64, cores=os.cpu_count() or 1), indent=2))


if __name__ == "__main__":
    _main()
