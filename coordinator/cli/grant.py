"""The grant `coordinator run` takes its key with, under its StopSignals: the one wait a
signal cuts short is the wait for a key."""

from __future__ import annotations

from contextlib import ExitStack

from coordinator.cli.stop import Stopped, StopSignals
from coordinator.client.blocking_lease import Lease
from coordinator.client.sync import Coordinator
from coordinator.errors import NoFreeKey


def grant(
    held: ExitStack,
    coordinator: Coordinator,
    stop: StopSignals,
    *,
    process_name: str,
    machine: str,
    lease_seconds: int | None,
    wait_seconds: float,
) -> Lease:
    """Enter a lease into `held`; on return its key is held (`stop.holding`).

    A grant that does not wait is let finish when a signal comes: cut short, it may have taken
    a key whose reply is lost, left held until it expires; granted, the key is released
    `interrupted` at once, its command never run. Only if no key was free is a key waited for,
    and that wait a signal cuts short at once."""
    stop.granting = True
    try:
        try:
            lease = held.enter_context(coordinator.lease(process_name, machine, lease_seconds))
        except NoFreeKey:
            if not wait_seconds and stop.received is None:
                raise
        else:
            stop.holding = True
            return lease
    finally:
        stop.granting = False
    if stop.received is not None:  # noted while the grant that found no key was in flight
        raise Stopped(stop.received)
    lease = held.enter_context(
        coordinator.lease(process_name, machine, lease_seconds, wait_seconds)
    )
    stop.holding = True
    return lease
