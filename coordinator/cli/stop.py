"""SIGINT and SIGTERM while `coordinator run` runs: a stop, never a failure.

While the command runs, a signal is passed on to it and `run` waits for it to end; while a
key is held but no command runs (it is about to start, or has ended and the key is being
released), the signal is noted and acted on once the release is done; while a grant that does
not wait is in flight, it is noted too (a key granted is then released at once, its command
never run), and a second one ends `run`; while nothing is held (waiting for a key), it ends
`run` there and then by raising Stopped.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What signal.signal takes and gives back.
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while `run` held nothing: it ends with 128 + `signum`.

    A KeyboardInterrupt, so a blocking call in flight (a grant waiting for a key) is given up
    as Ctrl-C gives it up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """`with StopSignals() as stop:` handles SIGINT and SIGTERM until the block ends;
    `stop.received` is the first that arrived, if any."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.holding = False
        """Set while a key is held (the grant is done, the release is not): a signal is then
        noted, not raised, so the release still happens."""
        self.granting = False
        """Set while a grant that does not wait is in flight: cut short, it may have taken a
        key it never hands over, left held until it expires. A first signal is noted, a
        second one raises."""
        self._child: subprocess.Popen[bytes] | None = None
        self._unsent = False  # noted while holding, before the command could be told
        self._previous: dict[int, Handler] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextmanager
    def running(self, child: subprocess.Popen[bytes]) -> Iterator[None]:
        """While `child` runs: a signal is passed on to it, and so is one that arrived while it
        was being started (it may already have told the world it runs)."""
        self._child = child
        if self._unsent and self.received is not None:
            self._unsent = False
            child.send_signal(self.received)
        try:
            yield
        finally:
            self._child = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.received is None
        if self.received is None:
            self.received = signum
        if self._child is not None:
            self._child.send_signal(signum)  # every one, as a terminal would send it
        elif self.holding:
            self._unsent = self._unsent or first
        elif self.granting:
            if not first:
                raise Stopped(self.received)
        elif first:
            raise Stopped(signum)
