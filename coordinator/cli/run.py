"""`coordinator run PROCESS -- COMMAND`: hold a key for exactly as long as a command runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from coordinator.client.blocking_lease import Lease
from coordinator.client.lease import LeaseLost
from coordinator.client.sync import Coordinator
from coordinator.errors import CoordinatorError, NoFreeKey, PassComplete
from coordinator.validation import CHECKPOINT_BYTES_MAX

POLL_SECONDS = 0.1
# How long `run --loop` waits for a key at a time when --wait is not given.
LOOP_WAIT_SECONDS = 30
NOT_FOUND = 127  # the statuses a shell gives these failures
NOT_EXECUTABLE = 126


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
        raise CommandNotRunnable(f"cannot run {program}: {found}", NOT_FOUND)
    if present[0].is_dir():
        raise CommandNotRunnable(f"cannot run {program}: it is a directory", NOT_EXECUTABLE)
    if not os.access(present[0], os.X_OK):
        raise CommandNotRunnable(
            f"cannot run {program}: permission denied (not executable)", NOT_EXECUTABLE
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
) -> int:
    """Acquire a key, run `command` with it in its environment, release it; the exit status.

    The command is checked first (CommandNotRunnable), so no key is taken for one that cannot
    run; a failure to acquire raises, except PassComplete: nothing is left to do, exit 0.
    `announce` is told the lease once it is held. Exit 0 releases `completed`, anything else
    `failed`. SIGINT and SIGTERM are passed to the command. If the lease is lost while the
    command runs, the command is stopped (SIGTERM): another worker may already hold the key.
    What the command writes to $BATCH_CHECKPOINT_FILE is saved as the key's checkpoint.
    """
    check_runnable(command)
    try:
        return _run_once(
            coordinator,
            process_name,
            machine,
            command,
            wait_seconds=wait_seconds,
            lease_seconds=lease_seconds,
            announce=announce,
        ).status
    except PassComplete as error:
        # A fleet of `run --wait` loops drains a `once` pass, then stops.
        print(f"coordinator: {error} Nothing to run.", file=sys.stderr)
        return 0


def run_loop(
    coordinator: Coordinator,
    process_name: str,
    machine: str,
    command: Sequence[str],
    *,
    wait_seconds: float = 0,
    lease_seconds: int | None = None,
    announce: Callable[[Lease], None] = lambda _lease: None,
) -> int:
    """`run --loop`: run the command under key after key, in one process, until the pass of a
    `once` process is complete (exit 0).

    A command that fails releases its key `failed` and the loop goes on: the process's
    max_attempts and backoff decide what becomes of the key. When no key is free, the loop
    waits (`wait_seconds`, else LOOP_WAIT_SECONDS at a time) and asks again, so a `rotate`
    process is worked until the loop is stopped. SIGINT or SIGTERM stop the command (passed on
    to it) and then the loop, with 128 + the signal's number. Other failures raise, as in
    run_job: AllQuarantined, say, or a service that stays unreachable.
    """
    check_runnable(command)
    ran = failed = 0
    while True:
        try:
            outcome = _run_once(
                coordinator,
                process_name,
                machine,
                command,
                wait_seconds=wait_seconds or LOOP_WAIT_SECONDS,
                lease_seconds=lease_seconds,
                announce=announce,
            )
        except NoFreeKey:
            continue  # every key is held or backing off: ask again
        except PassComplete as error:
            print(f"coordinator: {error} Ran {_keys(ran)}, {failed} failed.", file=sys.stderr)
            return 0
        ran += 1
        failed += outcome.status != 0
        if outcome.signal is not None:
            print(
                f"coordinator: stopped by {signal.Signals(outcome.signal).name} after"
                f" {_keys(ran)}, {failed} failed",
                file=sys.stderr,
            )
            return 128 + outcome.signal


def _keys(count: int) -> str:
    return f"{count} key" if count == 1 else f"{count} keys"


@dataclass(frozen=True)
class _Outcome:
    """How one command under one lease ended: its exit status, and the signal (SIGINT or
    SIGTERM) this process was sent meanwhile, if any."""

    status: int
    signal: int | None = None


def _run_once(
    coordinator: Coordinator,
    process_name: str,
    machine: str,
    command: Sequence[str],
    *,
    wait_seconds: float,
    lease_seconds: int | None,
    announce: Callable[[Lease], None],
) -> _Outcome:
    """One grant, one command, one release. Failures of the grant raise; a failure to end the
    lease after the command ran is said on stderr (its expiry frees the key)."""
    outcome, ran = _Outcome(0), False
    with tempfile.TemporaryDirectory(prefix="coordinator-run-") as folder:
        checkpoint_file = Path(folder) / "checkpoint"
        checkpoint_file.touch()
        try:
            with coordinator.lease(process_name, machine, lease_seconds, wait_seconds) as lease:
                lease.save_checkpoints_from(_CheckpointFile(checkpoint_file).read)
                announce(lease)
                ran = True
                outcome = _supervise(lease, process_name, command, checkpoint_file)
                if outcome.status != 0:
                    lease.fail()
        except CoordinatorError as error:
            if not ran:
                raise
            # The command ran; ending its lease failed. Its expiry frees the key.
            print(f"coordinator: {error}", file=sys.stderr)
            return _Outcome(outcome.status or 1, outcome.signal)
    return outcome


class _CheckpointFile:
    """The command's checkpoint file, read at each renewal: its text, or None to send none."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._warned = False

    def read(self) -> str | None:
        """The file's text; None when empty, gone, or unusable (said once on stderr)."""
        try:
            data = self._path.read_bytes()
        except OSError:  # the command removed it: nothing to save
            return None
        if not data:
            return None
        if len(data) <= CHECKPOINT_BYTES_MAX:
            try:
                return data.decode()
            except UnicodeDecodeError:
                pass
        if not self._warned:
            self._warned = True
            print(
                f"coordinator: $BATCH_CHECKPOINT_FILE must hold at most {CHECKPOINT_BYTES_MAX}"
                " bytes of UTF-8 text; the checkpoint is not saved while it does not",
                file=sys.stderr,
            )
        return None


def _supervise(
    lease: Lease, process_name: str, command: Sequence[str], checkpoint_file: Path
) -> _Outcome:
    """Run the command under the lease; its exit status (128 + N if killed by signal N)."""
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
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
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
        except OSError as error:  # checked before the lease, but it may have changed since
            print(f"coordinator: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
            status = NOT_EXECUTABLE if isinstance(error, PermissionError) else NOT_FOUND
            return _Outcome(status, received[0] if received else None)
        for signum in pending:
            child.send_signal(signum)
        while True:
            try:
                code = child.wait(POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if lease.lost and not stopping:
                    stopping = True
                    _report_lost(lease, f"stopping {command[0]}")
                    child.terminate()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if lease.lost and not stopping:
        _report_lost(lease, f"{command[0]} finished without it, so its work does not count")
    status = code if code >= 0 else 128 - code
    return _Outcome(status or (1 if lease.lost else 0), received[0] if received else None)


def _report_lost(lease: Lease, then: str) -> None:
    """The one line that says the lease was lost, why, and what follows."""
    try:
        lease.check()
        why: BaseException | None = None
    except LeaseLost as lost:
        why = lost.__cause__ or lost
    print(f"coordinator: lease {lease.external_id} was lost; {then} ({why})", file=sys.stderr)
