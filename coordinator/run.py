"""`coordinator run PROCESS -- COMMAND`: hold a key for exactly as long as a command runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from coordinator.client.lease import AsyncLease
from coordinator.client.sync import Coordinator
from coordinator.errors import CoordinatorError

POLL_SECONDS = 0.1


def run_job(
    coordinator: Coordinator,
    process_name: str,
    machine: str,
    command: Sequence[str],
    *,
    wait_seconds: float = 0,
    lease_seconds: int | None = None,
) -> int:
    """Acquire a key, run `command` with it in its environment, release it; the exit status.

    Exit 0 releases `completed`, anything else `failed`. SIGINT and SIGTERM are passed to the
    command. If the lease is lost while the command runs, the command is stopped (SIGTERM):
    another worker may already hold the key.
    """
    status = 0
    try:
        with coordinator.lease(process_name, machine, lease_seconds, wait_seconds) as lease:
            status = _supervise(lease, process_name, command)
            if status != 0:
                lease.fail()
    except CoordinatorError as error:
        print(f"coordinator: {error}", file=sys.stderr)
        return status or 1
    return status


def _supervise(lease: AsyncLease, process_name: str, command: Sequence[str]) -> int:
    """Run the command under the lease; its exit status (128 + N if killed by signal N)."""
    env = {
        **os.environ,
        "BATCH_KEY": str(lease.key),
        "KEY_SET_SIZE": str(lease.key_set_size),
        "FENCING_TOKEN": str(lease.fencing_token),
        "EXTERNAL_ID": lease.external_id,
        "PROCESS_NAME": process_name,
    }
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child is None:
            pending.append(signum)  # arrived while the command was starting: passed on below
        else:
            child.send_signal(signum)

    # Handlers before the command starts: a signal that arrives once it runs (it may already
    # have told the world so) must reach it, not kill this process and leave it orphaned.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    stopping = False
    try:
        try:
            # A session of its own: only the signals passed on here reach the command.
            child = subprocess.Popen(list(command), env=env, start_new_session=True)  # noqa: S603
        except OSError as error:
            print(f"coordinator: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
            return 127
        for signum in pending:
            child.send_signal(signum)
        while True:
            try:
                code = child.wait(POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if lease.lost and not stopping:
                    stopping = True
                    print(f"coordinator: lease {lease.external_id} was lost; stopping"
                          f" {command[0]}", file=sys.stderr)  # fmt: skip
                    child.terminate()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    status = code if code >= 0 else 128 - code
    return status or (1 if lease.lost else 0)
