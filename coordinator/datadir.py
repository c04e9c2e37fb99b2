"""The data folder of `coordinator serve`: one server at a time, a Valkey port kept across
restarts, and the file that tells client commands where the running server answers.

The folder is its owner's alone (0700, every file in it 0600, tightened at every start for
folders made by older versions): it holds the Valkey password and, in the append-only file,
every lease token, and the embedded Valkey refuses clients without the password.

Beside Valkey's own files (appendonlydir/, valkey.log) the folder holds:

- `coordinator.lock`: held with flock by the running server, with its pid and API URL. The OS
  releases it when the process ends, even by SIGKILL, so a crash never blocks the next start.
- `valkey.password`: the embedded Valkey's password, made at the first start and reused at
  every later one (direct workers of this user read it from server.json's redis_url).
- `valkey.port`: the port chosen at the first start and reused at every later one, so direct
  workers keep one URL.
- `server.json`: pid, api_url, redis_url (password included) and key_prefix of the running
  server; removed at a clean stop, and ignored once its pid has ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from coordinator.config import ConfigError
from coordinator.embedded import PASSWORD_PATTERN, free_port, port_is_free

LOCK_FILE = "coordinator.lock"
PASSWORD_FILE = "valkey.password"  # noqa: S105 - the file's name, not a password
PORT_FILE = "valkey.port"
SERVER_FILE = "server.json"
FOLDER_MODE = 0o700
FILE_MODE = 0o600
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

    @property
    def logged_redis_url(self) -> str:
        """redis_url without its password, as it may be shown."""
        parts = urlsplit(self.redis_url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


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
        make_private(self.path)
        # os.open's descriptors are not inherited (PEP 446): the Valkey child never holds it.
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
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
        # Said without the password, which stays in server.json.
        redis_url = server.logged_redis_url if server and server.pid == pid else "still starting"
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
            _write_private(port_file, f"{port}\n")

    @property
    def server_file(self) -> Path:
        """Where the running server is published (server.json)."""
        return self.path / SERVER_FILE

    @property
    def password_file(self) -> Path:
        """Where the embedded Valkey's password is kept."""
        return self.path / PASSWORD_FILE

    def valkey_password(self) -> str:
        """The embedded Valkey's password: the kept one, else a new one, kept from now on."""
        try:
            password = self.password_file.read_text().strip()
        except FileNotFoundError:
            password = secrets.token_urlsafe(32)
            _write_private(self.password_file, f"{password}\n")
            return password
        if not PASSWORD_PATTERN.fullmatch(password):
            raise ConfigError(
                f"{self.password_file} does not hold a password of this server"
                " (16 or more of A-Z a-z 0-9 - _): delete it to make a new one"
            )
        return password

    @contextlib.contextmanager
    def published(self, server: RunningServer) -> Iterator[None]:
        """Write server.json for the block, so client commands find this server."""
        target = self.path / SERVER_FILE
        partial = target.with_suffix(".json.partial")
        _write_private(partial, json.dumps(asdict(server)) + "\n")
        partial.replace(target)  # a reader never sees half a file
        try:
            yield
        finally:
            target.unlink(missing_ok=True)


def make_private(folder: Path) -> None:
    """Create `folder` as its owner's alone, or tighten it: 0700, everything in it 0700/0600."""
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    folder.chmod(FOLDER_MODE)
    # Symbolic links are neither followed nor changed.
    for parent, folders, files in os.walk(folder):
        for name in folders:
            if not (Path(parent) / name).is_symlink():
                (Path(parent) / name).chmod(FOLDER_MODE)
        for name in files:
            entry = Path(parent) / name
            if stat.S_ISREG(entry.lstat().st_mode):
                entry.chmod(FILE_MODE)


def _write_private(path: Path, text: str) -> None:
    """Write `path` as a 0600 file, whatever its mode was and whatever the umask is."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


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
