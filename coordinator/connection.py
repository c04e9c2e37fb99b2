"""Turns a COORDINATOR_REDIS_URL into an asyncio Redis client."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from coordinator.config import REDIS_URL_SCHEMES, ConfigError, Settings

MEMORY_URL = "memory://"


def connect(url: str, settings: Settings) -> Redis:
    """A client for `url`: a Redis or Valkey server, or `memory://` for in-process fakeredis."""
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
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # the client owns the pool and closes it
