"""Workers' clients: the same API over HTTP or directly on Redis, blocking or async.

`HttpCoordinator` talks to `coordinator serve`; `RedisCoordinator` runs the service's Lua
scripts directly on its Redis. `AsyncHttpCoordinator` and `AsyncRedisCoordinator` are the same
with `async`/`await`. Failures raise the exceptions of `coordinator.errors`, re-exported here.

```python
with RedisCoordinator("redis://127.0.0.1:6379/0") as coordinator:
    with coordinator.lease("nightly-invoices") as lease:  # machine: HOST:PID
        for row in rows_where(lease.sql_predicate("id")):
            lease.check()
            handle(row, fencing_token=lease.fencing_token)
```
"""

from coordinator.client.base import AsyncCoordinator
from coordinator.client.blocking_lease import Lease
from coordinator.client.direct import AsyncRedisCoordinator
from coordinator.client.http import AsyncHttpCoordinator
from coordinator.client.lease import AsyncLease, LeaseLost
from coordinator.client.sync import Coordinator, HttpCoordinator, RedisCoordinator
from coordinator.errors import (
    AllQuarantined,
    CoordinatorError,
    InvalidField,
    LeaseGone,
    NoFreeKey,
    OutageTooLong,
    PassComplete,
    PassFailed,
    ProcessExists,
    ServiceUnreachable,
    StoreUnavailable,
    UnknownKey,
    UnknownLease,
    UnknownPass,
    UnknownProcess,
)

__all__ = [
    "AllQuarantined",
    "AsyncCoordinator",
    "AsyncHttpCoordinator",
    "AsyncLease",
    "AsyncRedisCoordinator",
    "Coordinator",
    "CoordinatorError",
    "HttpCoordinator",
    "InvalidField",
    "Lease",
    "LeaseGone",
    "LeaseLost",
    "NoFreeKey",
    "OutageTooLong",
    "PassComplete",
    "PassFailed",
    "ProcessExists",
    "RedisCoordinator",
    "ServiceUnreachable",
    "StoreUnavailable",
    "UnknownKey",
    "UnknownLease",
    "UnknownPass",
    "UnknownProcess",
]
