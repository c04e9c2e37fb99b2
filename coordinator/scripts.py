"""Loads the Lua scripts in `lua/` and maps their status codes to exceptions."""

from __future__ import annotations

import logging
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from coordinator import lease_id
from coordinator.errors import (
    AllQuarantined,
    CoordinatorError,
    InvalidField,
    LeaseGone,
    NoFreeKey,
    NotLeaseHolder,
    PassComplete,
    PassFailed,
    ProcessExists,
    UnexpectedReply,
    UnknownKey,
    UnknownLease,
    UnknownPass,
    UnknownProcess,
)
from coordinator.pipeline import AutoPipeline

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from coordinator.connection import RedisClient

logger = logging.getLogger("coordinator")

NAMES = (
    "register",
    "unregister",
    "grant",
    "renew",
    "release",
    "inspect",
    "start_pass",
    "retry_key",
)
READ_ONLY = frozenset({"inspect"})


class Status(IntEnum):
    """The first element of every script's reply."""

    OK = 0
    UNKNOWN_PROCESS = 1
    PROCESS_EXISTS = 2
    NO_FREE_KEY = 3
    UNKNOWN_LEASE = 4
    LEASE_GONE = 5
    INVALID_ARGUMENT = 6
    NOT_LEASE_HOLDER = 7
    PASS_COMPLETE = 8
    ALL_QUARANTINED = 9
    UNKNOWN_KEY = 10
    UNKNOWN_PASS = 11
    MORE_PARKED = 12
    PASS_FAILED = 13


def lua_dir() -> Path:
    """Where the scripts are: inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "lua", here.parent / "lua"):
        if (candidate / "grant.lua").is_file():
            return candidate
    raise FileNotFoundError(f"the coordinator's Lua scripts are missing (looked in {here})")


def sources() -> dict[str, str]:
    """The source of each script, by operation name."""
    folder = lua_dir()
    return {name: (folder / f"{name}.lua").read_text() for name in NAMES}


class Scripts:
    """The scripts registered on one Redis client; each call is EVALSHA, reloaded on NOSCRIPT."""

    def __init__(
        self, redis: RedisClient, *, replica_acks: int = 0, replica_timeout_ms: int = 1000
    ) -> None:
        self._redis = redis
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source) for name, source in sources().items()
        }
        self.replica_acks = replica_acks
        self.replica_timeout_ms = replica_timeout_ms
        # Calls share one connection, written once per loop turn (coordinator.pipeline),
        # where the server allows it; a WAIT after each change would hold up every call
        # behind it on a shared connection, so replicated deployments keep the pool.
        self._pipeline = None if replica_acks else AutoPipeline.for_client(redis)

    @property
    def pipelined(self) -> bool:
        """Whether script calls go through the auto-pipelined connection."""
        return self._pipeline is not None

    async def call(self, name: str, keys: list[str], args: list[str | int]) -> list[Any]:
        """Run one script and return its reply (a list whose first element is a Status)."""
        if self._pipeline is not None:
            reply = await self._call_pipelined(self._pipeline, name, keys, args)
        elif self.replica_acks and name not in READ_ONLY:
            reply = await self._call_replicated(name, keys, args)
        else:
            reply = await self._scripts[name](keys=keys, args=args)
        if not isinstance(reply, list) or not reply:
            raise UnexpectedReply(f"script {name} answered {reply!r}")
        return reply

    async def _call_pipelined(
        self, pipeline: AutoPipeline, name: str, keys: list[str], args: list[str | int]
    ) -> Any:  # noqa: ANN401 - a script reply
        """EVALSHA on the shared connection; on NOSCRIPT, load the script and send it again."""
        script = self._scripts[name]
        try:
            return await pipeline.evalsha(script.sha, keys, args)
        except NoScriptError:
            await self._redis.script_load(script.script)
            return await pipeline.evalsha(script.sha, keys, args)

    async def aclose(self) -> None:
        """Give the shared connection back to the pool (the client is its owner's to close)."""
        if self._pipeline is not None:
            await self._pipeline.aclose()

    async def _call_replicated(self, name: str, keys: list[str], args: list[str | int]) -> Any:  # noqa: ANN401 - a script reply
        """EVALSHA then WAIT on the same connection: answer once replicas hold the change."""
        assert isinstance(self._redis, Redis), "replica acks need one primary, not a cluster"
        script = self._scripts[name]
        for attempt in (1, 2):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.wait(self.replica_acks, self.replica_timeout_ms)
                reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError) and attempt == 1:
                await self._redis.script_load(script.script)
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acked, Exception) or acked < self.replica_acks:
                # The change is made on the primary and stays made; a failover before the
                # replicas catch up may lose it, which fencing tokens make safe.
                logger.warning("%s reached %s of %d replicas", name, acked, self.replica_acks)
            return reply
        raise AssertionError("unreachable")

    async def load_missing(self) -> int:
        """Load every script Redis has forgotten (after a restart or SCRIPT FLUSH); count them."""
        scripts = list(self._scripts.values())
        present = await self._redis.script_exists(*(s.sha for s in scripts))
        missing = [s for s, ok in zip(scripts, present, strict=True) if not ok]
        for script in missing:
            await self._redis.script_load(script.script)
        return len(missing)


def raise_for_status(
    reply: list[Any],
    *,
    process_name: str = "",
    external_id: str = "",
    key: int = -1,
    number: int = 0,
) -> None:
    """Raise the exception a script's status code stands for; return quietly on OK."""
    code = reply[0]
    if code == Status.OK:
        return
    if code == Status.LEASE_GONE and len(reply) > 1 and process_name:
        # A grant's reply names the ended lease its request_id was granted (grant.lua).
        external_id = lease_id.external_id(process_name, int(reply[1]))
    if code == Status.UNKNOWN_PASS:
        raise UnknownPass(process_name, number)
    raise _error(code, reply, process_name, external_id, key)


def _error(
    code: object, reply: list[Any], process_name: str, external_id: str, key: int
) -> CoordinatorError:
    """The exception of one status code other than OK."""
    error: CoordinatorError
    if code == Status.UNKNOWN_PROCESS:
        error = UnknownProcess(process_name)
    elif code == Status.PROCESS_EXISTS:
        error = ProcessExists(process_name)
    elif code == Status.NO_FREE_KEY:
        error = NoFreeKey(process_name, int(reply[1]))
    elif code == Status.UNKNOWN_LEASE:
        error = UnknownLease(external_id)
    elif code == Status.LEASE_GONE:
        error = LeaseGone(external_id)
    elif code == Status.NOT_LEASE_HOLDER:
        error = NotLeaseHolder(external_id)
    elif code == Status.PASS_COMPLETE:
        error = PassComplete(process_name)
    elif code == Status.PASS_FAILED:
        error = PassFailed(process_name)
    elif code == Status.ALL_QUARANTINED:
        error = AllQuarantined(process_name)
    elif code == Status.UNKNOWN_KEY:
        error = UnknownKey(process_name, key)
    elif code == Status.INVALID_ARGUMENT:
        error = InvalidField(str(reply[1]), "was refused by the script as malformed")
    else:
        error = UnexpectedReply(f"unknown script status {code!r}")
    return error
