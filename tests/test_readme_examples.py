"""README.md's example outputs are what the service answers: each marked example
(tests/readme_shapes.py) is run against a real `coordinator serve` with its embedded Valkey —
curl sessions with curl, CLI sessions with the installed `coordinator` — and its JSON fields,
messages, table lines and exit statuses compared with the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from coordinator.cli.parser import build_parser
from coordinator.embedded import free_port
from tests.readme_shapes import (
    README,
    Example,
    Matcher,
    examples,
    lines_match,
    normalized,
    parse_shown,
    steps,
    unmarked_outputs,
)
from tests.test_readme import _section, _tables

BIN = Path(sys.executable).parent  # the venv's, where `coordinator` is installed
API = "/api/v1"
KINDS = {"serve-log", "curl", "cli", "metrics", "request-log"}
# The address README's examples call: the default of `coordinator serve`.
README_ADDRESS = re.compile(r"(?:localhost|127\.0\.0\.1):8000")
EXIT_SHOWN = '; echo "exit $?"'  # how a session shows a command's exit status


@dataclass
class Served:
    base: str
    log: Path
    api: httpx.Client

    def fresh(self) -> None:
        """No process registered, as a session in README starts."""
        for process in self.api.get(f"{API}/process").json():
            self.api.delete(f"{API}/process/{process['process_name']}")


def _env(base: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "COORDINATOR_URL": base, **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`coordinator serve` as `make run` starts it, logging requests (README "Logs")."""
    data = tmp_path_factory.mktemp("readme-serve")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = data / "serve.log"
    env = _env(base, COORDINATOR_DATA_DIR=str(data / "data"), COORDINATOR_LOG_LEVEL="info")
    # Frequent refreshes, so the metrics example's per-process series come soon.
    env["COORDINATOR_METRICS_REFRESH_SECONDS"] = "0.2"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "coordinator"), "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "coordinator serve did not become ready"
            time.sleep(0.05)
        with httpx.Client(base_url=base, timeout=10) as api:
            yield Served(base, log, api)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def _shell(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )


def _id(example: Example) -> str:
    return f"README.md:{example.line}"


def test_every_example_that_shows_output_is_marked() -> None:
    assert unmarked_outputs() == [], "mark each with <!-- example: KIND --> (readme_shapes.py)"
    assert {e.kind for e in examples()} == KINDS


@pytest.mark.parametrize("example", examples("curl"), ids=_id)
def test_the_curl_session_answers_as_shown(
    example: Example, served: Served, tmp_path: Path
) -> None:
    served.fresh()
    matcher = Matcher()
    env = _env(served.base)
    for step in steps(example):
        assignment = re.fullmatch(r"([A-Z]+)=(.*)", step.command)
        if assignment:
            # A value shown earlier (an external id) stands for the real one it matched.
            env[assignment[1]] = matcher.real(shlex.split(assignment[2])[0])
            continue
        command = README_ADDRESS.sub(served.base.removeprefix("http://"), step.command)
        result = _shell(command, env, tmp_path)
        assert result.returncode == 0, (step.command, result.stdout)
        matcher.match(parse_shown(step.shown), json.loads(result.stdout), step.command)
    assert matcher.problems == []


@pytest.mark.parametrize("example", examples("cli"), ids=_id)
def test_the_cli_session_prints_as_shown(example: Example, served: Served, tmp_path: Path) -> None:
    served.fresh()
    for step in steps(example):
        # stdout and stderr in one pipe, as a terminal shows them, in the order written.
        result = _shell(step.command, _env(served.base, PYTHONUNBUFFERED="1"), tmp_path)
        if EXIT_SHOWN not in step.command:
            assert result.returncode == 0, (step.command, result.stdout)
        real, shown = normalized(result.stdout), normalized(step.shown)
        assert lines_match(shown, real), (step.command, shown, real)


def test_the_serve_log_line_is_as_shown(served: Served) -> None:
    (example,) = examples("serve-log")
    real = normalized(served.log.read_text())
    for line in normalized(example.text):
        assert any(lines_match([line], [one]) for one in real), (line, real)


def _grant_all(served: Served, name: str, keys: int) -> str:
    """Register `name`, grant all its keys and one more (a 409), renew and release one: the
    traffic README's metrics and log examples come from. The first key's external id."""
    served.api.post(f"{API}/process", json={"process_name": name, "key_set_size": keys})
    body = {"process_name": name, "machine": "worker-7"}
    ids = [served.api.post(f"{API}/process/batch_keys", json=body).json() for _ in range(keys)]
    assert served.api.post(f"{API}/process/batch_keys", json=body).status_code == 409
    first: str = ids[0]["external_id"]
    assert served.api.patch(f"{API}/process/batch_keys/{first}", json={}).status_code == 200
    assert served.api.delete(f"{API}/process/batch_keys/{first}").status_code == 200
    return first


def test_the_request_log_line_is_as_shown(served: Served) -> None:
    served.fresh()
    (example,) = examples("request-log")
    shown = parse_shown(example.text)
    external_id = _grant_all(served, shown["process_name"], 1)
    deadline = time.monotonic() + 15
    while True:
        # Whole lines only: the server may be writing the last one.
        written = served.log.read_text().split("\n")[:-1]
        lines = [json.loads(x) for x in written if x.startswith("{")]
        grant = {"external_id": external_id, "status": 201}
        granted = [x for x in lines if grant.items() <= x.items()]
        if granted or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert granted, "no log line of the grant"
    matcher = Matcher()
    matcher.match(shown, granted[0], "log line")
    assert matcher.problems == []


_SERIES = re.compile(r"^(\w+)(\{.*\})? (\S+)$")


def test_the_metrics_shown_are_served(served: Served) -> None:
    """Each series README shows (name and labels) is served, with a number."""
    served.fresh()
    (example,) = examples("metrics")
    (step,) = steps(example)
    _grant_all(served, "nightly-invoices", 4)
    shown = [_SERIES.fullmatch(line) for line in step.shown.splitlines()]
    assert all(shown), step.shown
    deadline = time.monotonic() + 30
    while True:
        served_lines = served.api.get("/metrics").text.splitlines()
        real = {m[1] + (m[2] or ""): m[3] for m in map(_SERIES.fullmatch, served_lines) if m}
        missing = [m[1] + (m[2] or "") for m in shown if m and m[1] + (m[2] or "") not in real]
        # The per-process figures come with the next refresh after the traffic.
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert missing == []
    for series in shown:
        assert series
        float(real[series[1] + (series[2] or "")])  # a number, as shown


_FIELDS = re.compile(r"(process object|key object|event) is\s+`(\{[^`]*\})`")


def test_the_objects_listed_in_prose_have_the_services_fields(served: Served) -> None:
    """The prose's "A process object is `{…}`", "a key object is …", "an event is …" name
    every field the service answers."""
    served.fresh()
    _grant_all(served, "nightly-invoices", 1)
    real = {
        "process object": served.api.get(f"{API}/process/nightly-invoices").json(),
        "key object": served.api.get(f"{API}/process/batch_keys/nightly-invoices").json()[0],
        "event": served.api.get(f"{API}/process/nightly-invoices/events").json()[0],
    }
    text = README.read_text()
    listed = {m[1]: set(json.loads(m[2].replace("{", "[").replace("}", "]"))) for m in
              _FIELDS.finditer(re.sub(r"\s+", " ", text))}  # fmt: skip
    assert listed.keys() == real.keys()
    for what, fields in listed.items():
        assert fields == set(real[what]), what


def test_the_pass_object_shown_is_the_services(served: Served) -> None:
    served.fresh()
    served.api.post(f"{API}/process", json={"process_name": "nightly-invoices"})
    text = re.sub(r"\s+", " ", README.read_text())
    shown = re.search(r'`"pass": (\{[^`]*\})`', text)
    assert shown, "README shows the pass object"
    # Its numbers are an example pass's: the fields and their kinds are what must agree.
    matcher = Matcher(kinds_only=True)
    real = served.api.get(f"{API}/process/nightly-invoices").json()["pass"]
    matcher.match(parse_shown(shown[1]), real, "pass")
    assert matcher.problems == []


# Options every client command takes, described once under "Where the service is".
_SERVICE_OPTIONS = {"--url", "--token", "--redis-url", "--direct", "--prefix", "--outage-budget"}


def _commands(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, set[str]]]:
    """Every command of the CLI (`process register`, `run`, …) and its own options."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield path, {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    for action in subcommands:
        for name, sub in action.choices.items():
            yield from _commands(sub, f"{path} {name}".strip())


def test_the_command_table_lists_every_command_and_option() -> None:
    (table,) = [t for t in _tables(_section("Command line")) if t[0][0].startswith("`serve")]
    # A row's command is its first words in lower case: `key retry NAME KEY` is `key retry`.
    named = [(re.match(r"[a-z]+(?: [a-z]+)*(?= |$)", row[0].strip("`")), row) for row in table]
    rows = {m[0]: " ".join(row) for m, row in named if m}
    assert len(rows) == len(table), [row[0] for m, row in named if not m]
    commands = dict(_commands(build_parser()))
    assert rows.keys() == commands.keys()
    unlisted = {
        command: sorted(options - _SERVICE_OPTIONS - {"--help", "--json"} - set(
            re.findall(r"--[a-z][a-z-]*", rows[command])))
        for command, options in commands.items()
    }  # fmt: skip
    assert {command: options for command, options in unlisted.items() if options} == {}
