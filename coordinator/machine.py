"""The machine a lease is recorded for when the worker names none (the CLI and every client).

A host's name alone told nobody which worker held a key: three `coordinator run --loop` started
side by side on one host all recorded it, and the dashboard, `keys` and the quarantined keys'
last-failure machine showed the one name for all. The process id tells them apart (as Resque
and Sidekiq name their workers), and still starts with the host's name.
"""

from __future__ import annotations

import os
import socket


def default_machine() -> str:
    """This host's name and this process's id: "build-7:4242"."""
    return f"{socket.gethostname()}:{os.getpid()}"
