"""Workers' clients: the same API over HTTP or directly on Redis, blocking or async.

with RedisCoordinator("redis://127.0.0.1:6379/0") as coordinator:
    with coordinator.lease("nightly-invoices", machine=socket.gethostname()) as lease:
        for row in rows_where(lease.sql_predicate("id")):
            lease.check()
            handle(row, fencing_token=lease.fencing_token)
"""

from coordinator.client.base import AsyncCoordinator
from coordinator.client.direct import AsyncRedisCoordinator
from coordinator.client.http import AsyncHttpCoordinator
from coordinator.client.lease import AsyncLease, LeaseLost
from coordinator.client.sync import Coordinator, HttpCoordinator, RedisCoordinator
from coordinator.errors import (
    CoordinatorError,
    InvalidField,
    LeaseGone,
    NoFreeKey,
    ProcessExists,
    StoreUnavailable,
    UnknownLease,
    UnknownProcess,
)

__all__ = [
    "AsyncCoordinator",
    "AsyncHttpCoordinator",
    "AsyncLease",
    "AsyncRedisCoordinator",
    "Coordinator",
    "CoordinatorError",
    "HttpCoordinator",
    "InvalidField",
    "LeaseGone",
    "LeaseLost",
    "NoFreeKey",
    "ProcessExists",
    "RedisCoordinator",
    "StoreUnavailable",
    "UnknownLease",
    "UnknownProcess",
]
