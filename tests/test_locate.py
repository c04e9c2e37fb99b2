"""The Python clients find the service as the CLI does (coordinator.locate): an explicit URL,
else COORDINATOR_URL, else the server running on the data folder, else the built-in default,
which the CLI names on stderr once. A plain HTTP listener stands in for the service: it records
each request's path, Host and Authorization, and answers an empty list."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coordinator import locate
from coordinator.client import AsyncHttpCoordinator, HttpCoordinator
from coordinator.datadir import DataDir, RunningServer, make_private
from coordinator.locate import DEFAULT_URL, Source

CLI = [sys.executable, "-m", "coordinator.cli"]
LIST_PATH = "/api/v1/process"  # what processes() asks for


@dataclass(frozen=True)
class Seen:
    """One request as the listener saw it."""

    path: str
    host: str | None
    authorization: str | None


class Listener:
    """An HTTP server on a free port that records every request and answers `[]`."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        seen = self.seen

        class Record(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = self.headers
                seen.append(Seen(self.path, headers["Host"], headers["Authorization"]))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            def log_message(self, *args: object) -> None:  # quiet: pytest shows stderr
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def listener() -> Iterator[Listener]:
    served = Listener()
    yield served
    served.close()


@pytest.fixture
def other_listener() -> Iterator[Listener]:
    served = Listener()
    yield served
    served.close()


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No COORDINATOR_* variable, and a working folder of this test's own (no data folder)."""
    for name in [name for name in os.environ if name.startswith("COORDINATOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def publish(folder: Path, api_url: str) -> DataDir:
    """A data folder whose running server (this test's own process) answers at `api_url`:
    server.json as `coordinator serve` writes it."""
    make_private(folder)
    data = DataDir(folder)
    server = RunningServer(os.getpid(), api_url, "redis://127.0.0.1:1", "bpc")
    data.server_file.write_text(json.dumps(dataclasses.asdict(server)) + "\n")
    return data


def list_with(style: str, url: str | None = None, token: str | None = None) -> Source:
    """processes() with the blocking or async client built from (url, token); where it went."""
    if style == "blocking":
        blocking = HttpCoordinator(url, token)
        with blocking:
            assert blocking.processes() == []
        return blocking.service.source
    import asyncio  # noqa: PLC0415 - only the async style needs a loop of its own

    async def call() -> Source:
        client = AsyncHttpCoordinator(url, token)
        async with client:
            assert await client.processes() == []
        return client.service.source

    return asyncio.run(call())


# ---- the order ----


def test_the_first_place_that_names_a_url_wins(tmp_path: Path) -> None:
    running = publish(tmp_path / "data", "http://127.0.0.1:7001")
    env = {"COORDINATOR_URL": "http://env.example", "COORDINATOR_DATA_DIR": str(running.path)}
    assert locate.locate("http://given.example", env=env).url == "http://given.example"
    assert locate.locate("http://given.example", env=env).source is Source.ARGUMENT
    assert locate.locate(env=env).url == "http://env.example"
    assert locate.locate(env=env).source is Source.ENVIRONMENT
    env["COORDINATOR_URL"] = " "  # empty is unset, as the CLI reads every variable
    found = locate.locate(env=env)
    assert (found.url, found.source, found.data_dir) == (
        "http://127.0.0.1:7001",
        Source.DATA_FOLDER,
        running.path,
    )
    empty = tmp_path / "empty"
    found = locate.locate(env={"COORDINATOR_DATA_DIR": str(empty)})
    assert (found.url, found.source, found.data_dir) == (DEFAULT_URL, Source.DEFAULT, empty)


def test_a_data_folder_whose_server_has_ended_is_passed_over(tmp_path: Path) -> None:
    stale = publish(tmp_path / "data", "http://127.0.0.1:7001")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    text = stale.server_file.read_text().replace(str(os.getpid()), ended.stdout.strip())
    stale.server_file.write_text(text)
    assert locate.locate(env={"COORDINATOR_DATA_DIR": str(stale.path)}).source is Source.DEFAULT


def test_the_token_argument_wins_and_an_empty_one_sends_none() -> None:
    env = {"COORDINATOR_TOKEN": "from-env"}
    assert locate.locate("http://x", env=env).token == "from-env"  # whatever the URL's source
    assert locate.locate("http://x", "given", env=env).token == "given"
    assert locate.locate("http://x", "", env=env).token == ""
    assert locate.locate("http://x", env={}).token is None


def test_the_docstrings_give_the_order_and_the_default() -> None:
    for client in (HttpCoordinator, AsyncHttpCoordinator):
        doc = " ".join((client.__doc__ or "").split())
        assert "COORDINATOR_URL, else the server running on" in doc, client
        assert DEFAULT_URL in doc, client
        assert "COORDINATOR_TOKEN" in doc, client


# ---- both clients ----


@pytest.mark.parametrize("style", ["blocking", "async"])
def test_both_clients_call_coordinator_url_with_coordinator_token(
    style: str, clean: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COORDINATOR_URL", listener.url)
    monkeypatch.setenv("COORDINATOR_TOKEN", "env-token")
    assert list_with(style) is Source.ENVIRONMENT
    assert listener.seen == [Seen(LIST_PATH, listener.host, "Bearer env-token")]


@pytest.mark.parametrize("style", ["blocking", "async"])
@pytest.mark.parametrize("folder", ["COORDINATOR_DATA_DIR", "./.coordinator-data"])
def test_both_clients_find_the_data_folders_running_server(
    style: str, folder: str, clean: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    if folder == "COORDINATOR_DATA_DIR":
        publish(clean / "elsewhere", listener.url)
        monkeypatch.setenv("COORDINATOR_DATA_DIR", str(clean / "elsewhere"))
    else:  # the folder `coordinator serve` uses when started here
        publish(clean / ".coordinator-data", listener.url)
    assert list_with(style) is Source.DATA_FOLDER
    assert listener.seen == [Seen(LIST_PATH, listener.host, None)]


@pytest.mark.parametrize("style", ["blocking", "async"])
def test_an_explicit_url_and_token_win_over_the_environment(
    style: str,
    clean: Path,
    listener: Listener,
    other_listener: Listener,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COORDINATOR_URL", other_listener.url)
    monkeypatch.setenv("COORDINATOR_TOKEN", "env-token")
    publish(clean / ".coordinator-data", other_listener.url)
    assert list_with(style, listener.url, "given") is Source.ARGUMENT
    assert list_with(style, listener.url, "") is Source.ARGUMENT  # "": no token at all
    assert list_with(style, listener.url) is Source.ARGUMENT  # the variable's token
    assert listener.seen == [
        Seen(LIST_PATH, listener.host, "Bearer given"),
        Seen(LIST_PATH, listener.host, None),
        Seen(LIST_PATH, listener.host, "Bearer env-token"),
    ]
    assert other_listener.seen == []


# ---- the CLI ----


def cli(cwd: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in `cwd` (also its HOME), with no COORDINATOR_* variable but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    return subprocess.run(
        [*CLI, *argv],
        env={**clean, "HOME": str(cwd), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_names_the_default_once_and_only_when_it_falls_back(
    tmp_path: Path, listener: Listener
) -> None:
    # Nothing says where: the default is called, and named first, once, on stderr only. A
    # call ridden through an outage (nothing may listen there) must not repeat it.
    fallback = cli(tmp_path, "--json", "pass", "show", "nightly", "--outage-budget", "1")
    noted = [line for line in fallback.stderr.splitlines() if "built-in default" in line]
    assert noted == [fallback.stderr.splitlines()[0]], fallback.stderr
    (note,) = noted
    assert note.startswith("coordinator: ")
    for words in (DEFAULT_URL, "--url", "COORDINATOR_URL"):
        assert words in note
    assert str(tmp_path.resolve() / ".coordinator-data") in note
    assert "built-in default" not in fallback.stdout

    listing = ("--json", "process", "list")
    publish(tmp_path / "data", listener.url)
    told = [
        cli(tmp_path, *listing, "--url", listener.url),
        cli(tmp_path, *listing, COORDINATOR_URL=listener.url, COORDINATOR_TOKEN="t"),
        cli(tmp_path, *listing, COORDINATOR_DATA_DIR=str(tmp_path / "data")),
    ]
    for result in told:
        assert (result.returncode, result.stdout, result.stderr) == (0, "[]\n", "")
    assert [(seen.host, seen.authorization) for seen in listener.seen] == [
        (listener.host, None),
        (listener.host, "Bearer t"),
        (listener.host, None),
    ]
