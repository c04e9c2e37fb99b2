"""`coordinator run PROCESS -- COMMAND`: hold a key for exactly as long as a command runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from coordinator.cli import child, statuses
from coordinator.cli.checkpoint_file import CheckpointFile
from coordinator.cli.grant import grant
from coordinator.cli.loop_lines import say_failed, say_waiting
from coordinator.cli.stop import Stopped, StopSignals
from coordinator.client.blocking_lease import Lease
from coordinator.client.lease import LeaseLost
from coordinator.client.sync import Coordinator
from coordinator.errors import CoordinatorError, NoFreeKey, PassComplete, StoreUnavailable

POLL_SECONDS = 0.1
# How long `run --loop` waits for a key at a time when --wait is not given.
LOOP_WAIT_SECONDS = 30


class CommandNotRunnable(Exception):
    """The command is not found (127) or cannot be executed (126): no key was taken for it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def check_runnable(command: Sequence[str]) -> None:
    """Raise CommandNotRunnable unless the command names an executable file, as a shell
    would look it up (a name with a slash as a path, else on PATH)."""
    program = command[0]
    if "/" in program:
        candidates = [Path(program)]
    else:
        if shutil.which(program) is not None:
            return
        path = os.environ.get("PATH", os.defpath).split(os.pathsep)
        candidates = [Path(directory or ".") / program for directory in path]
    present = [c for c in candidates if c.exists()]
    if not present:
        found = "no such file" if "/" in program else "command not found"
        raise CommandNotRunnable(f"cannot run {program}: {found}", statuses.NOT_FOUND)
    if present[0].is_dir():
        raise CommandNotRunnable(
            f"cannot run {program}: it is a directory", statuses.NOT_EXECUTABLE
        )
    if not os.access(present[0], os.X_OK):
        raise CommandNotRunnable(
            f"cannot run {program}: permission denied (not executable)", statuses.NOT_EXECUTABLE
        )


def run_job(
    coordinator: Coordinator,
    process_name: str,
    machine: str,
    command: Sequence[str],
    *,
    wait_seconds: float = 0,
    lease_seconds: int | None = None,
    announce: Callable[[Lease], None] = lambda _lease: None,
    fatal_exit_codes: frozenset[int] = frozenset(),
) -> int:
    """Acquire a key, run `command` with it in its environment, release it; the exit status.

    The command is checked first (CommandNotRunnable), so no key is taken for one that cannot
    run; a failure to acquire raises, except PassComplete: nothing is left to do, exit 0.
    `announce` is told the lease once it is held. Exit 0 releases `completed`, a status in
    `fatal_exit_codes` `fatal` (the key is quarantined at once), anything else `failed`.
    SIGINT and SIGTERM are passed to the command, and its key is then released
    `interrupted` whatever it exits with; before it runs they end `run` at once (128 + N).
    If the lease is lost while the command runs, the command is stopped (SIGTERM): another
    worker may already hold the key. What the command writes to $BATCH_CHECKPOINT_FILE is
    saved as the key's checkpoint.
    """
    check_runnable(command)
    with StopSignals() as stop:
        try:
            outcome = _run_once(
                coordinator,
                stop,
                process_name,
                machine,
                command,
                wait_seconds=wait_seconds,
                lease_seconds=lease_seconds,
                announce=announce,
                fatal_exit_codes=fatal_exit_codes,
            )
        except PassComplete as error:
            # A fleet of `run --wait` loops drains a `once` pass, then stops.
            print(f"coordinator: {error} Nothing to run.", file=sys.stderr)
            return statuses.OK
    if outcome.interrupted and outcome.status == 0 and stop.received is not None:
        # Its key was not completed: a 0 would tell a supervisor the work was done.
        return statuses.SIGNALLED + stop.received
    return outcome.status


def run_loop(
    coordinator: Coordinator,
    process_name: str,
    machine: str,
    command: Sequence[str],
    *,
    wait_seconds: float = 0,
    lease_seconds: int | None = None,
    announce: Callable[[Lease], None] = lambda _lease: None,
    fatal_exit_codes: frozenset[int] = frozenset(),
) -> int:
    """`run --loop`: run the command under key after key, in one process, until the pass of a
    `once` process is complete (exit 0).

    A command that fails releases its key `failed` and the loop goes on: the process's
    max_attempts and backoff decide what becomes of the key. When no key is free, the loop
    waits (`wait_seconds`, else LOOP_WAIT_SECONDS at a time) and asks again, so a `rotate`
    process is worked until the loop is stopped. SIGINT or SIGTERM stop the command (passed on
    to it; its key is released `interrupted`) and then the loop, with 128 + the signal's
    number. An outage of the service is ridden out by the client, up to its outage budget;
    other failures raise, as in run_job: AllQuarantined, say, or an outage past the budget.
    """
    check_runnable(command)
    ran = failed = interrupted = 0
    held: list[Lease] = []  # the latest lease, for the line that says its command failed

    def noting(lease: Lease) -> None:
        held[:] = [lease]
        announce(lease)

    said = ""  # the last waiting line, said again only when it changes
    with StopSignals() as stop:
        try:
            while stop.received is None:
                try:
                    outcome = _run_once(
                        coordinator,
                        stop,
                        process_name,
                        machine,
                        command,
                        wait_seconds=wait_seconds or LOOP_WAIT_SECONDS,
                        lease_seconds=lease_seconds,
                        announce=noting,
                        fatal_exit_codes=fatal_exit_codes,
                    )
                except NoFreeKey:
                    said = say_waiting(coordinator, process_name, said)
                    continue  # every key is held or backing off: ask again
                except PassComplete as error:
                    done = f"Ran {_keys(ran)}, {failed} failed."
                    print(f"coordinator: {error} {done}", file=sys.stderr)
                    return statuses.OK
                ran += 1
                interrupted += outcome.interrupted
                if outcome.status != 0 and not outcome.interrupted:
                    failed += 1
                    say_failed(process_name, held[0] if held else None, outcome.status)
                said = ""
        except Stopped:
            pass  # while waiting for a key, or between two: nothing was held
    assert stop.received is not None  # the loop ends only when stopped, or returns
    print(
        f"coordinator: stopped by {signal.Signals(stop.received).name} after {_keys(ran)},"
        f" {failed} failed, {interrupted} interrupted",
        file=sys.stderr,
    )
    return statuses.SIGNALLED + stop.received


def _keys(count: int) -> str:
    return f"{count} key" if count == 1 else f"{count} keys"


@dataclass(frozen=True)
class _Outcome:
    """How one command under one lease ended: its exit status, and whether SIGINT or SIGTERM
    interrupted it (its key is then released `interrupted`)."""

    status: int
    interrupted: bool = False


def _run_once(
    coordinator: Coordinator,
    stop: StopSignals,
    process_name: str,
    machine: str,
    command: Sequence[str],
    *,
    wait_seconds: float,
    lease_seconds: int | None,
    announce: Callable[[Lease], None],
    fatal_exit_codes: frozenset[int] = frozenset(),
) -> _Outcome:
    """One grant, one command, one release. Failures of the grant raise, and so does an outage
    past the budget; another failure to end the lease after the command ran is said on stderr
    (its expiry frees the key)."""
    outcome, ran = _Outcome(0), False
    with tempfile.TemporaryDirectory(prefix="coordinator-run-") as folder:
        checkpoint_file = Path(folder) / "checkpoint"
        checkpoint_file.touch()
        try:
            with ExitStack() as held:
                # From here to the end of the release a signal is noted, not raised: the
                # release is never given up.
                lease = grant(
                    held,
                    coordinator,
                    stop,
                    process_name=process_name,
                    machine=machine,
                    lease_seconds=lease_seconds,
                    wait_seconds=wait_seconds,
                )
                lease.save_checkpoints_from(CheckpointFile(checkpoint_file).read)
                announce(lease)
                ran = True
                outcome = _supervise(lease, stop, process_name, command, checkpoint_file)
                if outcome.interrupted:
                    lease.interrupt()
                elif outcome.status != 0:
                    # A status the caller named fatal: the work can never succeed as it is.
                    lease.fail(fatal=outcome.status in fatal_exit_codes)
        except StoreUnavailable:
            raise  # the client rode the outage out for its whole budget: `run` ends with 75
        except CoordinatorError as error:
            if not ran:
                raise
            # The command ran; ending its lease failed. Its expiry frees the key.
            print(f"coordinator: {error}", file=sys.stderr)
            return _Outcome(outcome.status or 1, outcome.interrupted)
        finally:
            stop.holding = False
    return outcome


def _supervise(
    lease: Lease,
    stop: StopSignals,
    process_name: str,
    command: Sequence[str],
    checkpoint_file: Path,
) -> _Outcome:
    """Run the command under the lease; its exit status (128 + N if killed by signal N)."""
    if stop.received is not None:  # stopped while the key was being granted: never start
        return _Outcome(statuses.SIGNALLED + stop.received, interrupted=True)
    env = {
        **os.environ,
        "BATCH_CHECKPOINT": lease.previous_checkpoint or "",
        "BATCH_CHECKPOINT_FILE": str(checkpoint_file),
        "BATCH_KEY": str(lease.key),
        "KEY_SET_SIZE": str(lease.key_set_size),
        "FENCING_TOKEN": str(lease.fencing_token),
        "EXTERNAL_ID": lease.external_id,
        "PROCESS_NAME": process_name,
    }
    try:
        command_process = child.start(command, env)
    except OSError as error:  # checked before the lease, but it may have changed since
        print(f"coordinator: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
        refused = isinstance(error, PermissionError)
        status = statuses.NOT_EXECUTABLE if refused else statuses.NOT_FOUND
        return _Outcome(status, interrupted=stop.received is not None)
    stopping = False
    with stop.running(command_process):
        while True:
            try:
                code = command_process.wait(POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if lease.lost and not stopping:
                    stopping = True
                    _report_lost(lease, f"stopping {command[0]}")
                    command_process.terminate()
    if lease.lost and not stopping:
        _report_lost(lease, f"{command[0]} finished without it, so its work does not count")
    status = code if code >= 0 else statuses.SIGNALLED - code
    return _Outcome(status or (1 if lease.lost else 0), interrupted=stop.received is not None)


def _report_lost(lease: Lease, then: str) -> None:
    """The one line that says the lease was lost, why, and what follows."""
    try:
        lease.check()
        why: BaseException | None = None
    except LeaseLost as lost:
        why = lost.__cause__ or lost
    print(f"coordinator: lease {lease.external_id} was lost; {then} ({why})", file=sys.stderr)
