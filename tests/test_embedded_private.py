"""The embedded Valkey is the server's alone (issue 17, item 2): a password kept in a 0600
file, a 0700 data folder with 0600 files, and another local user who gets nothing.

The other user is the system's `nobody`, switched to with util-linux's setpriv; that needs
root, which CI has. Run as another user, the suite cannot switch user, so it asserts what
keeps `nobody` out instead: the modes, and NOAUTH for any client without the password.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from coordinator.embedded import EmbeddedValkey
from coordinator.scripts import sources
from tests.test_serve import _env, serving

# What `nobody` tries, with the standard library only (it cannot read the project's venv
# reliably): read each file named, then call release.lua without the password.
AS_NOBODY = """
import json, socket, sys
port, sha, *paths = sys.argv[1:]
read = {}
for path in paths:
    try:
        with open(path, "rb") as f:
            read[path] = f.read().decode(errors="replace")
    except OSError as error:
        read[path] = type(error).__name__
with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as conn:
    conn.sendall(f"*3\\r\\n$7\\r\\nEVALSHA\\r\\n$40\\r\\n{sha}\\r\\n$1\\r\\n0\\r\\n".encode())
    reply = conn.recv(4096).decode(errors="replace")
print(json.dumps({"read": read, "reply": reply}))
"""


def _modes(folder: Path) -> dict[str, int]:
    """The permission bits of `folder` and of everything in it, by path relative to it."""
    found = {".": stat.S_IMODE(folder.stat().st_mode)}
    for entry in folder.rglob("*"):
        found[str(entry.relative_to(folder))] = stat.S_IMODE(entry.lstat().st_mode)
    return found


def _assert_private(folder: Path) -> None:
    """The folder and its sub-folders 0700, every file 0600."""
    expected = {name: 0o700 if (folder / name).is_dir() else 0o600 for name in _modes(folder)}
    assert {name: oct(mode) for name, mode in _modes(folder).items()} == {
        name: oct(mode) for name, mode in expected.items()
    }


def _loosen(folder: Path) -> None:
    """Give the folder the modes older versions made: 0755 folders, 0644 files."""
    for entry in [folder, *folder.rglob("*")]:
        entry.chmod(0o755 if entry.is_dir() else 0o644)


@pytest.fixture
def data() -> Iterator[Path]:
    """A data folder whose parent every user may enter, as under a home directory (pytest's
    own tmp_path is 0700, which would keep `nobody` out whatever the folder's modes)."""
    parent = Path(tempfile.mkdtemp(prefix="bpc-private-"))
    parent.chmod(0o755)
    try:
        yield parent / "data"
    finally:
        shutil.rmtree(parent)


def _password(data: Path) -> str:
    return (data / "valkey.password").read_text().strip()


def test_data_folder_is_private_and_tightened_at_start(data: Path) -> None:
    # A folder an older version made, with a file of its own in it.
    data.mkdir(mode=0o755)
    (data / "notes.txt").write_text("mine\n")
    _loosen(data)
    with serving(_env(data)) as served:
        created = httpx.post(f"{served.base}/api/v1/process", json={"process_name": "kept"})
        assert created.status_code == 201
        assert (data / "appendonlydir").is_dir()  # Valkey's own files are among those checked
        assert {"server.json", "valkey.password", "valkey.port", "valkey.log"} <= set(_modes(data))
        _assert_private(data)
        password = _password(data)
        assert len(password) >= 32
        assert (
            f"redis://:{password}@127.0.0.1:"
            in json.loads((data / "server.json").read_text())["redis_url"]
        )
        assert password not in served.log
    # As an older version would have left it: tightened again at the next start, the same
    # password kept, and the append-only data still read.
    _loosen(data)
    with serving(_env(data)) as served:
        _assert_private(data)
        assert _password(data) == password
        listed = httpx.get(f"{served.base}/api/v1/process").json()
        assert [p["process_name"] for p in listed] == ["kept"]


def test_another_local_user_gets_nothing(data: Path) -> None:
    with serving(_env(data)) as served:
        base = served.base
        httpx.post(f"{base}/api/v1/process", json={"process_name": "payroll", "key_set_size": 1})
        held = httpx.post(
            f"{base}/api/v1/process/batch_keys", json={"process_name": "payroll", "machine": "m"}
        )
        assert held.status_code == 201, held.text
        redis_url = json.loads((data / "server.json").read_text())["redis_url"]
        # The script the attacker calls is loaded, so only the missing password refuses it.
        with redis.Redis.from_url(redis_url) as owner:
            sha = str(owner.script_load(sources()["release"]))
        port = redis_url.rpartition(":")[2].split("/")[0]
        secrets = [
            data / "server.json",
            data / "valkey.password",
            *(p for p in (data / "appendonlydir").iterdir() if p.is_file()),
        ]
        _assert_private(data)
        if os.geteuid() == 0:
            switch = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        else:
            # Only root can become another user: the modes above keep every other user out,
            # and the port's refusal below holds for any client without the password.
            switch = []
        tried = subprocess.run(
            [*switch, "/usr/bin/python3", "-c", AS_NOBODY, port, sha, *map(str, secrets)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        result = json.loads(tried.stdout)
        if switch:
            assert result["read"] == {str(path): "PermissionError" for path in secrets}
        assert result["reply"].startswith("-NOAUTH"), result["reply"]
        # The lease is still the holder's.
        renewed = httpx.patch(f"{base}/api/v1/process/batch_keys/{held.json()['external_id']}")
        assert renewed.status_code == 200, renewed.text


def test_embedded_valkey_with_a_password(tmp_path: Path) -> None:
    password = "p" * 16 + "-_0Z"
    with EmbeddedValkey(tmp_path / "valkey", password=password) as server:
        assert server.url == f"redis://:{password}@127.0.0.1:{server.port}/0"
        assert password not in server.logged_url
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
            pid = client.info("server")["process_id"]
        with (
            redis.Redis(port=server.port) as stranger,
            pytest.raises(redis.exceptions.AuthenticationError),
        ):
            stranger.ping()
        # Handed over on stdin, never on the command line every local user can read.
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(b"PING\r\n")
            assert conn.recv(100).startswith(b"-NOAUTH")
    for bad in ("short", "has space in it here", "x" * 15):
        with pytest.raises(ValueError, match="Valkey password"):
            EmbeddedValkey(tmp_path / "refused", password=bad)
