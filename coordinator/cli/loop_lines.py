"""The lines `coordinator run --loop` says on stderr as it goes: one per key whose command
failed (its attempts and what became of it), and one while it waits out a backoff."""

from __future__ import annotations

import sys

from coordinator.cli.progress_text import iso_utc
from coordinator.client.blocking_lease import Lease
from coordinator.client.sync import Coordinator
from coordinator.errors import CoordinatorError


def say_failed(process_name: str, lease: Lease | None, status: int) -> None:
    """Say that the command failed under `lease` with exit `status`, and what its release
    made of the key: its attempts and state (in backoff until when, quarantined, free)."""
    if lease is None:  # nothing was granted: no command ran
        return
    line = f"coordinator: key {lease.key} of {process_name} failed (exit status {status})"
    released = lease.released_as
    if released is None:
        print(f"{line}; its release answered nothing (the lease had ended)", file=sys.stderr)
        return
    if released.state == "backoff":
        then = f"in backoff until {iso_utc(released.retry_at)}"
    elif released.state == "free":
        then = "free again"
    else:
        then = released.state
    print(f"{line}: attempt {released.attempts}, {then}", file=sys.stderr)


def say_waiting(coordinator: Coordinator, process_name: str, said: str) -> str:
    """When no key is free because keys are in backoff, say so and until when, unless that
    line was the last said; returns the last line said."""
    try:
        progress = coordinator.progress(process_name)
    except CoordinatorError:
        return said  # a service without progress: the wait goes on unsaid, as before
    if not progress.keys_in_backoff:
        return said
    count = progress.keys_in_backoff
    keys = f"{count} key is" if count == 1 else f"{count} keys are"
    line = (
        f"coordinator: no key of {process_name} is free: {keys} in backoff, the first until"
        f" {iso_utc(progress.backoff_ends_at)} ({progress.keys_held} held); waiting"
    )
    if line != said:
        print(line, file=sys.stderr)
    return line
