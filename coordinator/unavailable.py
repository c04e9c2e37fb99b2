"""Which Redis failures are the store's, never the caller's: they answer 503 and may be retried.

A connection that drops or times out is one kind. The other is an error *reply* whose code
says the server cannot take writes (or any command) right now: out of memory under
`noeviction`, too few replicas for `min-replicas-to-write`, a failed background save, a
dataset still loading, a script running too long, a failover in progress. Those are told apart
from the replies a bug would cause (WRONGTYPE, ERR in a script) by the reply's first word, so a
bug still surfaces as a 500 and is logged whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coordinator.errors import StoreUnavailable

# The first word of an error reply that means "not now", not "not like this".
UNAVAILABLE_REPLIES = frozenset(
    {
        "OOM",  # maxmemory reached under noeviction
        "NOREPLICAS",  # min-replicas-to-write not met
        "MISCONF",  # stop-writes-on-bgsave-error after a failed save
        "LOADING",  # the dataset is still being loaded after a restart
        "BUSY",  # a script or function is running past busy-reply-threshold
        "MASTERDOWN",  # a replica that lost its primary (replica-serve-stale-data no)
        "READONLY",  # a replica just demoted or not yet promoted
        "TRYAGAIN",  # cluster: a slot is moving
        "CLUSTERDOWN",  # cluster: not every slot is served
        "UNBLOCKED",  # a blocked command ended by a role change
    }
)


def reply_code(error: ResponseError) -> str:
    """The first word of an error reply (redis-py moves known ones into `status_code`)."""
    code = getattr(error, "status_code", None)
    if isinstance(code, str) and code:
        return code
    return str(error).split(" ", 1)[0]


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means Redis cannot serve right now, as opposed to a bug."""
    # BusyLoadingError (LOADING) is a ConnectionError; these subclasses carry the code too.
    known = (ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError)
    if isinstance(error, (RedisConnectionError, RedisTimeoutError, *known)):
        return True
    return isinstance(error, ResponseError) and reply_code(error) in UNAVAILABLE_REPLIES


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn Redis being down, slow or refusing for now into StoreUnavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, ResponseError) as error:
        if not is_unavailable(error):
            raise
        if isinstance(error, ResponseError):
            message = f"Redis cannot serve this now ({reply_code(error)}): {error}"
            raise StoreUnavailable(message) from error
        raise StoreUnavailable(f"Redis did not answer: {error}") from error
