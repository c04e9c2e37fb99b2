"""One JSON line per request, tied to its answer by X-Request-ID."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator import logs
from tests.test_serve import _env, serving

pytestmark = pytest.mark.anyio

API = "/api/v1/process"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines() -> Iterator[list[logging.LogRecord]]:
    """The request lines the app writes (its logger does not propagate, so attach directly)."""
    collect = _Collect()
    logs.ACCESS.addHandler(collect)
    try:
        yield collect.records
    finally:
        logs.ACCESS.removeHandler(collect)


def _parsed(records: list[logging.LogRecord]) -> list[dict]:
    return [json.loads(r.getMessage()) for r in records if r.name == "coordinator.access"]


async def test_a_grant_is_one_line_with_what_it_touched(
    client: httpx.AsyncClient, register, lines
) -> None:
    name = (await register(key_set_size=2))["process_name"]
    lines.clear()
    response = await client.post(f"{API}/batch_keys", json={"process_name": name, "machine": "m"})
    [line] = _parsed(lines)
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert (line["method"], line["route"], line["status"]) == (
        "POST", "/api/v1/process/batch_keys", 201,
    )  # fmt: skip
    assert line["process_name"] == name
    assert line["key"] == 0
    assert line["external_id"] == response.json()["external_id"]
    assert line["duration_ms"] >= 0
    assert line["level"] == "info"


async def test_a_release_line_names_the_process_it_resolved(
    client: httpx.AsyncClient, register, lines
) -> None:
    name = (await register(key_set_size=1))["process_name"]
    key = (
        await client.post(f"{API}/batch_keys", json={"process_name": name, "machine": "m"})
    ).json()
    lines.clear()
    await client.delete(f"{API}/batch_keys/{key['external_id']}")
    gone = await client.delete(f"{API}/batch_keys/{key['external_id']}")
    first, second = _parsed(lines)
    assert (first["status"], first["process_name"], first["key"]) == (200, name, 0)
    assert second["status"] == 410
    assert second["external_id"] == key["external_id"]
    assert second["request_id"] == gone.headers["X-Request-ID"]


async def test_a_callers_request_id_is_kept_only_if_harmless(
    client: httpx.AsyncClient, lines
) -> None:
    kept = await client.get(API, headers={"X-Request-ID": "trace-42.a:b"})
    assert kept.headers["X-Request-ID"] == "trace-42.a:b"
    replaced = await client.get(API, headers={"X-Request-ID": "x" * 200})
    assert replaced.headers["X-Request-ID"] != "x" * 200
    assert len(replaced.headers["X-Request-ID"]) == 32
    unknown = await client.get("/no/such/route")
    ids = [line["request_id"] for line in _parsed(lines)]
    assert ids == [
        "trace-42.a:b",
        replaced.headers["X-Request-ID"],
        unknown.headers["X-Request-ID"],
    ]
    assert _parsed(lines)[-1]["status"] == 404


def test_serve_writes_json_lines_and_honours_the_level(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL="memory://")
    with serving(env) as served:
        answer = httpx.get(f"{served.base}{API}")
    request_lines = [json.loads(x) for x in served.log.splitlines() if x.startswith("{")]
    assert answer.headers["X-Request-ID"] in {line["request_id"] for line in request_lines}
    assert '"GET /api/v1/process HTTP/1.1"' not in served.log  # no second, unstructured line
    quiet_dir = tmp_path / "quiet"
    quiet_dir.mkdir()
    with serving(_env(quiet_dir / "data", COORDINATOR_REDIS_URL="memory://"),
                 "--log-level", "warning") as quiet:  # fmt: skip
        httpx.get(f"{quiet.base}{API}")
    assert not [x for x in quiet.log.splitlines() if x.startswith("{")]


class _Writes(io.StringIO):
    """A stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_request_lines_are_written_together_soon_after() -> None:
    stream = _Writes()
    writer = logs.LineWriter(stream)
    for n in range(3):
        writer.write(f'{{"n":{n}}}')
    assert stream.getvalue() == ""  # queued, not yet written
    await asyncio.sleep(logs.FLUSH_SECONDS * 4)
    assert stream.getvalue() == '{"n":0}\n{"n":1}\n{"n":2}\n'
    assert stream.writes == 1


def test_outside_an_event_loop_a_line_is_written_at_once() -> None:
    stream = _Writes()
    logs.LineWriter(stream).write("now")
    assert stream.getvalue() == "now\n"
