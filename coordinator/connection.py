"""Turns a COORDINATOR_REDIS_URL into an asyncio Redis client."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coordinator.config import REDIS_URL_SCHEMES, ConfigError, Settings
from coordinator.pipeline import peer_closed

MEMORY_URL = "memory://"

# The store runs unchanged on one server, a Sentinel-managed primary, or a cluster: every
# script touches one slot, and the commands it sends outside scripts are keyed.
RedisClient = Redis | RedisCluster


def connect(url: str, settings: Settings) -> RedisClient:
    """A client for `url`: a Redis or Valkey server, a cluster (`redis+cluster://`), a
    Sentinel-managed primary (`redis+sentinel://`), or `memory://` (in-process fakeredis)."""
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        return RedisCluster.from_url(
            url.replace("+cluster", "", 1),
            decode_responses=True,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
            max_connections=settings.redis_max_connections,
        )
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        return _sentinel_primary(url, settings)
    if url.startswith(MEMORY_URL):
        try:
            import fakeredis  # noqa: PLC0415 - optional, only for memory://
        except ImportError:
            raise ConfigError(
                "memory:// needs fakeredis: pip install 'batch-process-coordinator[memory]'"
            ) from None
        # Blocking like the real pool below: past max_connections a request waits for a
        # connection instead of failing with "Too many connections" (503).
        client: Redis = fakeredis.FakeAsyncRedis(
            decode_responses=True,
            connection_pool_class=BlockingConnectionPool,
            max_connections=settings.redis_max_connections,
        )
        return client
    if not url.startswith(REDIS_URL_SCHEMES):
        raise ConfigError(f"a Redis URL must start with one of {REDIS_URL_SCHEMES}, not {url!r}")
    # A blocking pool: when every connection is busy (waiting grants hold one each), a
    # request queues for one instead of failing.
    pool = _Pool.from_url(
        url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # the client owns the pool and closes it


class _Pool(BlockingConnectionPool):
    """redis-py's blocking pool, which also replaces a connection reset while it sat idle.

    redis-py checks a pooled connection for unread data or an EOF, not for a reset (RST sets
    the stream's error, not its EOF), and hands the dead connection out: its command then
    fails (503) though Valkey is fine. A middlebox that drops idle flows does that to them all.
    """

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        if connection.is_connected and peer_closed(connection):
            await connection.disconnect(nowait=True)  # connected again just below
        await super().ensure_connection(connection)


class _Sentinels(Sentinel):
    """redis-py's Sentinel with a discovery that many connections may run at once.

    redis-py moves the sentinel that answered to the front of its list by an index read
    before its await; concurrent discoveries (every new pooled connection runs one) then
    duplicate one sentinel in the list and drop another, which is never asked again nor
    closed. This moves it by identity instead.
    """

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: list[str] = []
        for sentinel in list(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()
            except (RedisConnectionError, RedisTimeoutError) as error:
                errors.append(f"{sentinel} - {error!r}")
                continue
            state = masters.get(service_name) if isinstance(masters, dict) else None
            if state and self.check_master_state(state, service_name):
                self.sentinels.remove(sentinel)
                self.sentinels.insert(0, sentinel)  # ask it first next time
                return state["ip"], state["port"]
        detail = f" : {', '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"No master found for {service_name!r}{detail}")


class _SentinelPrimary(Redis):
    """The primary's client; closing it also closes its connections to the sentinels, which
    redis-py leaves open (the Sentinel object is not owned by the client it hands out)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def _sentinel_primary(url: str, settings: Settings) -> Redis:
    """`redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path:
        raise ConfigError(
            "a Sentinel URL is redis+sentinel://host:port[,host:port...]/service-name[/db]"
        )
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigError(f"a Sentinel address must be host:port, not {host!r}")
        sentinels.append((name, int(port)))
    timeout = settings.redis_timeout_seconds
    sentinel = _Sentinels(  # type: ignore[no-untyped-call]  # redis-py leaves __init__ untyped
        sentinels,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    primary: Redis = sentinel.master_for(
        path[0],
        redis_class=_SentinelPrimary,
        decode_responses=True,
        db=int(path[1]) if len(path) > 1 and path[1].isdigit() else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=url.startswith("rediss+"),
        max_connections=settings.redis_max_connections,
    )
    return primary
