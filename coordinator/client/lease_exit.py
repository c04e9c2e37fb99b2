"""Leaving a lease's block: the outcome it is released with, and a release that is sent.

The outcome follows how the block ended (completed, failed or interrupted). The release is
sent even if the task leaving the block is cancelled meanwhile, a server that predates
`interrupted` is answered `failed`, and a lease found already gone is reported, not raised,
so the lease can say it was lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from coordinator.errors import InvalidField, LeaseGone, UnknownLease
from coordinator.models import BatchKey

logger = logging.getLogger("coordinator.client")

# Leaving the block by these is an interruption, not a failure of the work: the key is
# released `interrupted` (no attempt counted, checkpoint kept, back at its old place).
INTERRUPTIONS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


class LeaseReleaser(Protocol):
    """What releasing a lease needs of its client (AsyncCoordinator offers it)."""

    async def release(
        self, external_id: str, outcome: str = "completed", *, retry: bool = True
    ) -> BatchKey | None: ...


def outcome_on_leaving(
    exc_type: type[BaseException] | None, *, failed: bool, interrupted: bool, fatal: bool = False
) -> str:
    """The outcome a block ended by `exc_type` (None: normally) is released with; `fatal`
    (the holder said the work can never succeed) makes a failure quarantine the key."""
    if interrupted or (exc_type is not None and issubclass(exc_type, INTERRUPTIONS)):
        return "interrupted"
    if fatal:
        return "fatal"
    if exc_type is not None or failed:
        return "failed"
    return "completed"


async def unless_cancelled(leaving: asyncio.Future[None]) -> None:
    """Wait for a release; a cancellation meanwhile (a second Ctrl-C, a task group giving up)
    still goes up to the caller, but the release carries on and is sent."""
    try:
        await asyncio.shield(leaving)
    except asyncio.CancelledError:
        leaving.add_done_callback(_log_failure)  # nobody is left to raise it to
        raise


def _log_failure(leaving: asyncio.Future[None]) -> None:
    if not leaving.cancelled() and leaving.exception() is not None:
        logger.warning("a release whose caller was cancelled failed: %r", leaving.exception())


async def release(
    service: LeaseReleaser, external_id: str, outcome: str, *, retry: bool = True
) -> BatchKey | None:
    """Release as `outcome`; a server that predates `interrupted` or `fatal` is answered
    `failed` (the nearest outcome it knows: the key keeps its place, an attempt counted)."""
    try:
        return await service.release(external_id, outcome, retry=retry)
    except InvalidField as error:
        if outcome not in ("interrupted", "fatal") or error.field != "outcome":
            raise
        logger.warning("the service does not know outcome %s: releasing failed", outcome)
        return await service.release(external_id, "failed", retry=retry)


async def release_quietly(service: LeaseReleaser, external_id: str, outcome: str) -> None:
    """Release as `outcome`, logging a failure: the caller is raising another error."""
    try:
        await release(service, external_id, outcome)
    except Exception as error:  # noqa: BLE001 - the error that ended the block is the one raised; the key's expiry frees it
        logger.warning("releasing lease %s failed: %r", external_id, error)


async def release_on_leaving(
    service: LeaseReleaser,
    external_id: str,
    outcome: str,
    *,
    lost: bool,
    deadline: float,
    on_released: Callable[[BatchKey], None] = lambda _key: None,
) -> BaseException | None:
    """Release as `outcome` a lease believed held until `deadline` (monotonic) unless `lost`;
    return why the lease turned out to have ended before the release, or None.
    `on_released` is told the key as the release answered it."""
    try:
        # A lost lease is tried once: its expiry frees the key anyway.
        released = await release(service, external_id, outcome, retry=not lost)
        ended_before = released is None
        if released is not None:
            on_released(released)
    except (LeaseGone, UnknownLease) as error:
        return error
    except Exception as error:  # any failure: the lease is lost; its expiry frees the key
        if not lost:
            raise
        logger.warning("releasing lost lease %s failed: %s", external_id, error)
        return None
    if ended_before and time.monotonic() >= deadline:
        # A retried release found the lease over, past the time it was believed
        # held: it may have run out rather than been released by the lost attempt.
        return LeaseGone(external_id)
    return None
