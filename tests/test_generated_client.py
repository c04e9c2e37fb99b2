"""A Python client generated from the live /openapi.json by openapi-python-client drives the
service: the core cycle, a batch run, and the event history with every event type.

The generated code parses every answer with the document's own schemas, so a field, an enum
value or a status the document leaves out fails here, where a hand-written client would not
notice.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from coordinator.auth import new_token
from coordinator.models import EVENT_TYPES
from tests.test_serve import _env, serving

PACKAGE = "generated_coordinator_client"
TOKEN, TOKEN_LINE = new_token("admin")
GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `coordinator serve` (embedded Valkey, one admin token) for the module."""
    data = tmp_path_factory.mktemp("generated-serve") / "data"
    with serving(_env(data, COORDINATOR_TOKENS=TOKEN_LINE), "--log-level", "warning") as served:
        yield served.base


@pytest.fixture(scope="module")
def gen(base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The generated package, imported; `gen.api`, `gen.models`, `gen.client` its parts."""
    folder = tmp_path_factory.mktemp("generated")
    document = folder / "openapi.json"
    document.write_bytes(httpx.get(f"{base}/openapi.json").content)
    # No post hooks: the generator would run ruff over its output, which is not ours to lint.
    config = folder / "config.yaml"
    config.write_text("post_hooks: []\n")
    result = subprocess.run(
        [
            *(str(GENERATOR), "generate", "--path", str(document), "--meta", "none"),
            *("--output-path", str(folder / PACKAGE), "--config", str(config)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # A warning means a part of the document the generator could not turn into code.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(folder))
    try:
        generated = _Generated(base)
        with generated.client, generated.open_client:
            yield generated
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]


class _Generated:
    """The generated modules by operation id, and a client of the live server."""

    def __init__(self, base: str) -> None:
        self.package = importlib.import_module(PACKAGE)
        self.models = importlib.import_module(f"{PACKAGE}.models")
        self.client = self.package.AuthenticatedClient(base_url=base, token=TOKEN)
        self.open_client = self.package.Client(base_url=base)

    def op(self, name: str) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.api.default.{name}")

    def call(self, name: str, *args: Any, status: int, **kwargs: Any) -> Any:
        """Call operation `name` and return its parsed answer, which must have `status`."""
        response = self.op(name).sync_detailed(*args, client=self.client, **kwargs)
        assert response.status_code == status, (name, response.status_code, response.content)
        return response.parsed


def _name(tag: str) -> str:
    return f"gen-{tag}-{time.monotonic_ns()}"


def test_the_core_cycle(gen: Any) -> None:
    models = gen.models
    health = gen.op("healthz").sync_detailed(client=gen.open_client)
    assert health.status_code == 200
    assert isinstance(health.parsed, models.Status)
    name = _name("cycle")
    process = gen.call(
        "register_process",
        body=models.RegisterRequest(process_name=name, key_set_size=1, lease_seconds=60),
        status=201,
    )
    assert isinstance(process, models.Process)
    assert (process.process_name, process.key_set_size) == (name, 1)

    granted = gen.call(
        "grant_batch_key", body=models.GrantRequest(process_name=name, machine="m1"), status=201
    )
    assert isinstance(granted, models.BatchKey)
    assert granted.key == 0
    assert granted.state == models.BatchKeyState.HELD
    lease = str(granted.external_id)

    # The only key is held: the refusal parses as a Problem with its code.
    refused = gen.call(
        "grant_batch_key", body=models.GrantRequest(process_name=name, machine="m2"), status=409
    )
    assert isinstance(refused, models.Problem)
    assert refused.code == models.ProblemCode.NO_FREE_KEY

    renewed = gen.call(
        "renew_batch_key", lease, body=models.RenewRequest(lease_seconds=120), status=200
    )
    assert renewed.expires_at > granted.expires_at
    released = gen.call("release_batch_key", lease, status=200)
    assert isinstance(released, models.BatchKey)
    # Released completed: free again (a rotating process), with its completion stamped.
    (key,) = gen.call("list_batch_keys", name, status=200)
    assert key.state == models.BatchKeyState.FREE
    assert key.last_completed_at is not None
    gone = gen.call("release_batch_key", lease, status=410)
    assert gone.code == models.ProblemCode.LEASE_GONE

    # The scrape and the page are described too: text, a token for the one, none for the other.
    scraped = gen.call("metrics", status=200)
    assert "coordinator_grants_total" in scraped
    refused = gen.op("metrics").sync_detailed(client=gen.open_client)
    assert refused.status_code == 401
    assert refused.parsed.code == models.ProblemCode.UNAUTHORIZED
    page = gen.op("dashboard").sync_detailed(client=gen.open_client)
    assert page.status_code == 200
    assert page.parsed.startswith("<!doctype html>")


def test_a_batch_run(gen: Any) -> None:
    models = gen.models
    name = _name("run")
    mode = models.Mode.ONCE
    gen.call(
        "register_process",
        body=models.RegisterRequest(process_name=name, key_set_size=3, mode=mode),
        status=201,
    )
    started = gen.call("start_pass", name, body=models.StartPassRequest(after=1), status=201)
    number = started.pass_.number
    assert number == 2
    seen = set()
    for _ in range(3):
        lease = gen.call(
            "grant_batch_key", body=models.GrantRequest(process_name=name, machine="m"), status=201
        )
        seen.add(lease.key)
        gen.call("release_batch_key", str(lease.external_id), status=200)
    assert seen == {0, 1, 2}
    done = gen.call("get_pass", name, number, status=200)
    assert isinstance(done, models.Pass)
    assert (done.keys_done, done.keys_quarantined) == (3, 0)
    assert done.completed_at is not None
    complete = gen.call(
        "grant_batch_key", body=models.GrantRequest(process_name=name, machine="m"), status=409
    )
    assert complete.code == models.ProblemCode.PASS_COMPLETE


def test_the_event_history_has_every_event_type(gen: Any) -> None:
    models = gen.models
    once, outcome = models.Mode.ONCE, models.ReleaseBatchKeyOutcome
    # A batch run where one failure quarantines a key (max_attempts 1), so every ending of a
    # lease shows, and a rotating process whose lease is left to run out.
    run, rotating = _name("events-run"), _name("events-expiry")
    gen.call(
        "register_process",
        body=models.RegisterRequest(process_name=run, key_set_size=1, mode=once, max_attempts=1),
        status=201,
    )
    gen.call(
        "register_process",
        body=models.RegisterRequest(process_name=rotating, key_set_size=1),
        status=201,
    )

    def grant(name: str, lease_seconds: int | None = None) -> Any:
        body = models.GrantRequest(process_name=name, machine="m", lease_seconds=lease_seconds)
        return gen.op("grant_batch_key").sync_detailed(client=gen.client, body=body)

    def lease() -> str:
        response = grant(run)
        assert response.status_code == 201, response.content
        return str(response.parsed.external_id)

    held = lease()
    gen.call("renew_batch_key", held, status=200)
    gen.call("release_batch_key", held, outcome=outcome.INTERRUPTED, status=200)
    gen.call("release_batch_key", lease(), outcome=outcome.FAILED, status=200)  # quarantined
    gen.call("retry_batch_key", run, 0, status=200)
    gen.call("revoke_batch_key", lease(), status=200)
    gen.call("retry_batch_key", run, 0, status=200)
    gen.call("release_batch_key", lease(), status=200)  # the pass completes
    gen.call("start_pass", run, status=201)
    gen.call("unregister_process", run, status=200)
    # A `once` run that tolerates no quarantined key: a fatal release fails its pass.
    failing = _name("events-failing")
    gen.call(
        "register_process",
        body=models.RegisterRequest(
            process_name=failing, key_set_size=1, mode=once, max_failed_keys=0
        ),
        status=201,
    )
    doomed = grant(failing)
    assert doomed.status_code == 201, doomed.content
    gen.call("release_batch_key", str(doomed.parsed.external_id), outcome=outcome.FATAL, status=200)

    assert grant(rotating, lease_seconds=1).status_code == 201
    # Its one key is free again once the lease ran out; the grant that reclaims it records
    # the expiry.
    deadline = time.monotonic() + 30
    while (response := grant(rotating)).status_code != 201:
        assert response.parsed.code == models.ProblemCode.NO_FREE_KEY, response.content
        assert time.monotonic() < deadline, "the 1 s lease never expired"
        time.sleep(0.2)

    # A history outlives its process, and every entry parses into the generated Event.
    events = [
        *gen.call("list_events", run, limit=1000, status=200),
        *gen.call("list_events", rotating, limit=1000, status=200),
        *gen.call("list_events", failing, limit=1000, status=200),
    ]
    assert all(isinstance(event, models.Event) for event in events)
    assert {event.type_.value for event in events} == set(EVENT_TYPES)
    assert {member.value for member in models.EventType} == set(EVENT_TYPES)
