"""The small protections of issue 17, against a live `coordinator serve` on the session's Valkey:
a client hanging up mid-body is one 499 line (no 500, no traceback), and a lease id is
accepted only in the one spelling the service issues."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from coordinator.embedded import EmbeddedValkey
from tests.test_serve import Served, _env, serving

KEYS = "/api/v1/process/batch_keys"
PROCESS = "/api/v1/process"
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, valkey: EmbeddedValkey) -> Iterator[Served]:
    """One open-mode `coordinator serve` for the module, under a key prefix of its own."""
    data = tmp_path_factory.mktemp("small-security") / "data"
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with serving(_env(data, COORDINATOR_REDIS_URL=valkey.url, COORDINATOR_KEY_PREFIX=prefix)) as s:
        yield s


@pytest.fixture
def api(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base, timeout=10) as client:
        yield client


def _hang_up_mid_body(base: str, path: str) -> None:
    """Send a request head declaring 1000 bytes, then 10 of them, and close."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.encode() + b'{"process_')
        # Long enough for the server to have read the head and started on the body.
        time.sleep(0.2)


def _lines_for(served: Served, path: str, since: int) -> list[str]:
    """Log lines written after offset `since` that name `path`, once the server has written
    one (it batches lines for up to 50 ms)."""
    deadline = time.monotonic() + 10
    while True:
        fresh = served.log[since:]
        lines = [line for line in fresh.splitlines() if f'"path":"{path}"' in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.parametrize("path", [KEYS, PROCESS])
def test_a_client_hanging_up_mid_body_is_one_499_line_and_no_500(
    served: Served, api: httpx.Client, path: str
) -> None:
    before = api.get("/metrics").text
    since = len(served.log)
    _hang_up_mid_body(served.base, path)
    [line] = _lines_for(served, path, since)
    assert '"status":499' in line
    assert '"level":"info"' in line
    # Once the line is out, nothing else about this request follows: no traceback, no ERROR.
    time.sleep(0.2)
    after_log = served.log[since:]
    assert "Traceback" not in after_log
    assert "ClientDisconnect" not in after_log
    assert "ERROR" not in after_log
    assert len(after_log) < 1000, after_log  # one line, not 6.7 KB
    metrics = api.get("/metrics").text
    assert 'status="500"' not in metrics
    assert 'outcome="error"' not in metrics
    assert f'route="{path}",status="499"' in metrics
    assert before.count('status="499"') < metrics.count('status="499"')


def _spellings(external_id: str) -> dict[str, str]:
    """Every other spelling uuid.UUID reads as the same id (as they go in a URL path)."""
    return {
        "upper case": external_id.upper(),
        "no hyphens": external_id.replace("-", ""),
        "braces": "{" + external_id + "}",
        "urn": "urn:uuid:" + external_id,
        "arabic-indic digits": external_id.translate(ARABIC_INDIC),
        "a trailing newline": external_id + "%0A",
    }


def test_only_the_canonical_spelling_of_a_lease_id_is_accepted(api: httpx.Client) -> None:
    name = f"ids-{uuid.uuid4().hex[:8]}"
    assert api.post(PROCESS, json={"process_name": name, "key_set_size": 1}).status_code == 201
    granted = api.post(KEYS, json={"process_name": name, "machine": "m"})
    assert granted.status_code == 201, granted.text
    external_id = granted.json()["external_id"]
    never_issued = str(uuid.UUID(int=uuid.UUID(external_id).int + 1))  # the next token's id
    unknown = api.patch(f"{KEYS}/{never_issued}", json={})
    assert unknown.status_code == 404
    for spelling, text in _spellings(external_id).items():
        assert text != external_id
        for answer in (
            api.patch(f"{KEYS}/{text}", json={}),
            api.delete(f"{KEYS}/{text}"),
            api.post(f"{KEYS}/{text}/revoke"),
        ):
            assert answer.status_code == 404, (spelling, answer.text)
            body = answer.json()
            assert body["code"] == "unknown_lease", (spelling, body)
            assert name not in answer.text
    # None of those touched the lease: its holder still renews and releases it by its id.
    assert api.patch(f"{KEYS}/{external_id}", json={}).status_code == 200
    assert api.delete(f"{KEYS}/{external_id}").status_code == 200
