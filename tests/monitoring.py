"""MONITOR for tests: every command Valkey runs while a block runs, scripts' own included.

Counts and names of commands, not timings: what a script did, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis


class Seen:
    """Every command Valkey ran while `monitored` was open, each as its words."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def per_script_call(self, command: str) -> list[int]:
        """How many times `command` ran inside each EVALSHA that ran it, in order (Valkey
        logs an EVALSHA before the commands it runs; one answered NOSCRIPT runs none)."""
        counts: list[int] = []
        for words in self.commands:
            if words[0].upper() == "EVALSHA":
                counts.append(0)
            elif words[0].upper() == command and counts:
                counts[-1] += 1
        return [n for n in counts if n]

    def script_calls(self) -> list[list[str]]:
        """The names of the commands each EVALSHA ran, one list per call, in order."""
        calls: list[list[str]] = []
        for words in self.commands:
            name = words[0].upper()
            if name == "EVALSHA":
                calls.append([])
            elif calls:
                calls[-1].append(name)
        return calls


@asynccontextmanager
async def monitored(redis: Redis) -> AsyncIterator[Seen]:
    """MONITOR while the block runs; its commands are all in once it ends."""
    seen, marker = Seen(), f"end-{uuid.uuid4().hex}"
    async with redis.monitor() as monitor:

        async def listen() -> None:
            async for command in monitor.listen():
                seen.commands.append(str(command["command"]).split())
                if marker in seen.commands[-1]:
                    return

        listening = asyncio.create_task(listen())
        await asyncio.sleep(0)
        yield seen
        await redis.echo(marker)
        await asyncio.wait_for(listening, 30)
    seen.commands.pop()  # the marker's ECHO
