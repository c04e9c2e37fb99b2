"""The data folder of `coordinator serve`: one server at a time, a Valkey port kept across
restarts, and the file that tells client commands where the running server answers.

Beside Valkey's own files (appendonlydir/, valkey.log) the folder holds:

- `coordinator.lock`: held with flock by the running server, with its pid and API URL. The OS
  releases it when the process ends, even by SIGKILL, so a crash never blocks the next start.
- `valkey.port`: the port chosen at the first start and reused at every later one, so direct
  workers keep one URL.
- `server.json`: pid, api_url, redis_url and key_prefix of the running server; removed at a
  clean stop, and ignored once its pid has ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from coordinator.config import ConfigError
from coordinator.embedded import free_port, port_is_free

LOCK_FILE = "coordinator.lock"
PORT_FILE = "valkey.port"
SERVER_FILE = "server.json"
# A server killed a moment ago leaves its Valkey a moment to shut down and free the port.
PORT_FREE_WAIT_SECONDS = 2.0
# New ports are chosen from here up to the ephemeral range, where no outgoing connection's
# source port (which the kernel takes from that range) can hold the kept port at a restart.
KEPT_PORT_LOWEST = 20_000


class FolderInUse(ConfigError):
    """Another `coordinator serve` is running on this data folder."""


class PortTaken(ConfigError):
    """The port Valkey must reuse is taken by another program."""


@dataclass(frozen=True, slots=True)
class RunningServer:
    """Where the server running on a data folder answers: the fields of server.json."""

    pid: int
    api_url: str
    redis_url: str
    key_prefix: str


def running_server(data_dir: Path) -> RunningServer | None:
    """The server running on `data_dir`, or None (no server.json, or its process has ended)."""
    try:
        fields = json.loads((data_dir / SERVER_FILE).read_text())
        server = RunningServer(
            int(fields["pid"]),
            str(fields["api_url"]),
            str(fields["redis_url"]),
            str(fields["key_prefix"]),
        )
    except (OSError, ValueError, LookupError, TypeError):
        return None
    return server if _alive(server.pid) else None


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0) and kill(-n) would ask about process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


class DataDir:
    """The data folder, owned by this process inside `owned()`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def owned(self, api_url: str) -> Iterator[DataDir]:
        """Hold the folder's lock for the block, or raise FolderInUse naming who holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        # os.open's descriptors are not inherited (PEP 446): the Valkey child never holds it.
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FolderInUse(self._in_use(os.pread(fd, 4096, 0))) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "api_url": api_url}).encode(), 0)
            yield self
        finally:
            os.close(fd)  # releases the lock

    def _in_use(self, holder: bytes) -> str:
        """The refusal, naming the server that holds the folder."""
        try:
            fields = json.loads(holder)
            pid, api_url = int(fields["pid"]), str(fields["api_url"])
        except (ValueError, KeyError, TypeError):  # it has locked and not yet written
            pid, api_url = 0, "unknown"
        server = running_server(self.path)
        redis_url = server.redis_url if server and server.pid == pid else "still starting"
        return (
            f"the data folder {self.path.resolve()} is in use by another `coordinator serve`"
            f" (pid {pid or 'unknown'}, API {api_url}, Valkey {redis_url}): stop it, or set"
            " COORDINATOR_DATA_DIR to another folder"
        )

    def valkey_port(self, configured: int | None) -> int:
        """Valkey's port: COORDINATOR_VALKEY_PORT, else the kept one, else a new one."""
        port_file = self.path / PORT_FILE
        if configured is not None:
            port, fix = configured, "set COORDINATOR_VALKEY_PORT to a free port"
            where = "COORDINATOR_VALKEY_PORT"
        elif (kept := self._kept_port()) is not None:
            port, where = kept, f"kept in {port_file}"
            fix = f"set COORDINATOR_VALKEY_PORT, or delete {port_file} to choose a new port"
        else:
            return _new_port()
        deadline = time.monotonic() + PORT_FREE_WAIT_SECONDS
        while not port_is_free(port):
            if time.monotonic() > deadline:
                raise PortTaken(
                    f"Valkey's port {port} ({where}) is taken by another program: stop it, {fix}"
                )
            time.sleep(0.05)
        return port

    def _kept_port(self) -> int | None:
        port_file = self.path / PORT_FILE
        try:
            text = port_file.read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ConfigError(f"{port_file} holds {text!r}, not a port: delete it to choose one")
        return int(text)

    def keep_port(self, port: int) -> None:
        """Remember Valkey's port for the next start."""
        port_file = self.path / PORT_FILE
        if not port_file.exists() or port_file.read_text().strip() != str(port):
            port_file.write_text(f"{port}\n")

    @contextlib.contextmanager
    def published(self, server: RunningServer) -> Iterator[None]:
        """Write server.json for the block, so client commands find this server."""
        target = self.path / SERVER_FILE
        partial = target.with_suffix(".json.partial")
        partial.write_text(json.dumps(asdict(server)) + "\n")
        partial.replace(target)  # a reader never sees half a file
        try:
            yield
        finally:
            target.unlink(missing_ok=True)


def _new_port() -> int:
    """A free port below the ephemeral range when there is room there, else any free one."""
    ephemeral = _ephemeral_lowest()
    if ephemeral - KEPT_PORT_LOWEST >= 1000:
        for _ in range(100):
            port = random.randrange(KEPT_PORT_LOWEST, ephemeral)  # noqa: S311 - not a secret
            if port_is_free(port):
                return port
    return free_port()


def _ephemeral_lowest() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux; else 32768)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32_768
