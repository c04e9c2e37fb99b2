"""Emptying a deleted process's large structures a bounded chunk per command.

unregister.lua renames a process's sorted sets and hashes to names unique to the deletion
(`KeySpace.doomed`); the deleting caller then drains them here before it answers. Freeing a
million members at once, even by UNLINK off the main thread, stalls Valkey: with libc malloc
the lazy-free thread and every command contend for the allocator, and a trivial EVAL took
170-340 ms after UNLINKing a 1,000,000-key process. Should the caller die first, the doomed
keys expire (unregister.lua's DOOMED_MS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.keys import DOOMED_ZSETS

if TYPE_CHECKING:
    from coordinator.connection import RedisClient

# Members or fields a delete frees per command: 0.3-0.8 ms of Valkey each. Valkey runs one
# client's pipelined commands back to back, so a sorted set's chunks go DRAIN_PIPELINED at a
# time (about 1.3 ms), and a hash's HDEL travels with the next chunk's HSCAN.
DRAIN_CHUNK = 1000
DRAIN_PIPELINED = 4


async def drain(redis: RedisClient, doomed: dict[str, str]) -> None:
    """Empty a deletion's doomed structures (structure -> key name) a chunk per command."""
    for structure, key in doomed.items():
        if structure in DOOMED_ZSETS:
            await _drain_sorted_set(redis, key)
        else:
            await _drain_hash(redis, key)


async def _drain_sorted_set(redis: RedisClient, key: str) -> None:
    """Drop a doomed sorted set's lowest ranks until none are left."""
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(DRAIN_PIPELINED):
                pipe.zremrangebyrank(key, 0, DRAIN_CHUNK - 1)
            removed = await pipe.execute()
        if not removed[-1]:
            return


async def _drain_hash(redis: RedisClient, key: str) -> None:
    """HSCAN a doomed hash, deleting each chunk's fields along with reading the next.

    The cursor goes on from where the last chunk ended (a scan restarted at 0 would reread
    the emptied buckets each time); nothing adds to a doomed hash, so one whole scan meets
    every field.
    """
    cursor, fields = await redis.hscan(key, 0, count=DRAIN_CHUNK)
    while fields or cursor:
        async with redis.pipeline(transaction=False) as pipe:
            if fields:
                pipe.hdel(key, *fields)
            if cursor:
                pipe.hscan(key, cursor, count=DRAIN_CHUNK)
            read = await pipe.execute()
        cursor, fields = read[-1] if cursor else (0, {})
