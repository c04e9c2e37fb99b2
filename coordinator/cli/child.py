"""The command `coordinator run` starts: in a session of its own, and (on Linux) killed when
`run` dies, however it dies.

A killed `run` renews its lease no more: the key expires and another worker may take it.
A command left running would work a slice nobody holds, so the kernel is asked to kill it
with `run` (PR_SET_PDEATHSIG). Off Linux there is no such request, and nothing is asked: a
`kill -9` of `run` leaves its command running there, as it would any parent's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# SIGKILL, not SIGTERM: a command may trap, ignore or take its time over SIGTERM, and once
# `run` is gone nothing is left to renew the lease, save a checkpoint or release: the slice
# must stop being worked at once. What it saved stays saved (each renewal sent the checkpoint
# file), and its writes are fenced by its token.
PARENT_DEATH_SIGNAL = signal.SIGKILL


def _resolve_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved now: the child, between fork and exec, must not load a library,
    allocate or take a lock (another thread may have held one at the fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no libc symbol to call (a static build, say)
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _resolve_prctl()


def start(command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start `command` with `env`, in a session of its own (only the signals `run` passes on
    reach it), to die with this process on Linux. Raises OSError if it cannot be started.

    Call it from the main thread: the kernel sends the signal when the thread that forked
    the child ends, and the client's thread is not the one that lives as long as `run`."""
    return subprocess.Popen(  # noqa: S603 - the user's own command, run as given
        list(command),
        env=dict(env),
        start_new_session=True,
        preexec_fn=None if _PRCTL is None else _die_with(os.getpid(), _PRCTL),  # noqa: PLW1509 - one system call, resolved before the fork
    )


def _die_with(parent: int, prctl: Callable[..., int]) -> Callable[[], None]:
    """What the child runs between fork and exec: ask to be killed when `parent` dies."""
    death_signal = int(PARENT_DEATH_SIGNAL)

    def ask() -> None:
        prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        # `run` may have died between the fork and the request, and the kernel sends nothing
        # for a death that came before it: the child was handed to another parent meanwhile.
        if os.getppid() != parent:
            os.kill(os.getpid(), death_signal)

    return ask
