"""Redis must never evict the service's keys: reading `maxmemory-policy`, refusing all but
`noeviction`.

Under any other policy (a shared cache Redis: allkeys-lru, volatile-ttl, ...) Redis drops keys
one at a time when memory runs short: a free list loses a key, a lease loses its record, and
one key can be granted twice. Under `noeviction` a full Redis refuses writes instead (503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coordinator.config import ConfigError, Settings
from coordinator.connection import RedisClient, connect
from coordinator.errors import StoreUnavailable

logger = logging.getLogger("coordinator")

SAFE_POLICY = "noeviction"


class Evicting(StoreUnavailable):
    """Redis may evict keys: its maxmemory-policy is not noeviction."""

    def __init__(self, policy: str) -> None:
        super().__init__(
            f"Redis may evict the service's keys (maxmemory-policy {policy}), which breaks"
            f" exclusion: set maxmemory-policy {SAFE_POLICY}"
        )
        self.policy = policy


async def eviction_policy(redis: RedisClient) -> str | None:
    """Redis's maxmemory-policy (on a cluster, every primary's: the first evicting one, if
    any); None when CONFIG GET is refused (a managed Redis, an ACL user without it)."""
    try:
        if isinstance(redis, RedisCluster):
            await redis.initialize()  # so that get_primaries() knows the nodes
            replies = await asyncio.gather(
                *(
                    redis.config_get("maxmemory-policy", target_nodes=node)
                    for node in redis.get_primaries()
                )
            )
        else:
            replies = [await redis.config_get("maxmemory-policy")]
    except ResponseError:  # "unknown command" or NOPERM; connection errors go to the caller
        return None
    policies = [_policy(reply) for reply in replies]
    if not policies or None in policies:
        return None
    return next((p for p in policies if p != SAFE_POLICY), SAFE_POLICY)


def _policy(reply: Mapping[Any, object]) -> str | None:
    """The value in CONFIG GET's reply, decoded or not."""
    for name, value in reply.items():
        if name in ("maxmemory-policy", b"maxmemory-policy"):
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class EvictionGuard:
    """Refuses a Redis that may evict keys; warns once when it cannot read the policy.

    One lives in each app's lifespan state, so the warning is logged once per process.
    """

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self.warned = False

    async def check(self) -> None:
        """Raise Evicting under an evicting policy, StoreUnavailable if Redis does not answer."""
        try:
            policy = await eviction_policy(self.redis)
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise StoreUnavailable(f"Redis did not answer: {error}") from error
        if policy is None:
            if not self.warned:
                self.warned = True
                logger.warning(
                    "cannot read Redis's maxmemory-policy (CONFIG GET is refused): make sure"
                    " it is %s, or Redis may evict keys and two workers hold one key",
                    SAFE_POLICY,
                )
        elif policy != SAFE_POLICY:
            raise Evicting(policy)


async def refuse_evicting(url: str, settings: Settings) -> None:
    """At start-up: ConfigError if the Redis at `url` may evict keys. A policy that cannot be
    read is left to /readyz, whose guard warns once in each API process."""
    client = connect(url, settings)
    try:
        policy = await eviction_policy(client)
    except (RedisError, RedisClusterException) as error:
        # A Redis down at start-up is /readyz's to report, as before: serve starts anyway.
        logger.warning("could not check Redis's maxmemory-policy at start-up: %s", error)
        return
    finally:
        await client.aclose()
    if policy is not None and policy != SAFE_POLICY:
        raise ConfigError(str(Evicting(policy)))
