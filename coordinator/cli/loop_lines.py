"""The lines `coordinator run --loop` says on stderr as it goes: one per key whose command
failed (its attempts and what became of it), and one while it waits out a backoff."""

from __future__ import annotations

import sys

from coordinator.cli.progress_text import iso_utc
from coordinator.client.sync import Coordinator
from coordinator.errors import CoordinatorError


def say_failed(coordinator: Coordinator, process_name: str, key: int | None, status: int) -> None:
    """Say that the command failed under `key` with exit `status`, and the key's state now.

    The state is read back (one request, on failures only): the release's own answer stays
    inside the lease. A key neither parked nor quarantined may already be another worker's.
    """
    if key is None:  # nothing was granted: no command ran
        return
    line = f"coordinator: key {key} of {process_name} failed (exit status {status})"
    try:
        now = coordinator.key(process_name, key)
    except CoordinatorError as error:
        print(f"{line}; its state could not be read: {error}", file=sys.stderr)
        return
    if now.state == "backoff":
        then = f"in backoff until {iso_utc(now.retry_at)}"
    elif now.state in {"held", "done"}:
        then = f"{now.state} since, by another lease"
    elif now.state == "free":
        then = "free again"
    else:
        then = now.state
    print(f"{line}: attempt {now.attempts}, {then}", file=sys.stderr)


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
