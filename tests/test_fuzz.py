"""Schemathesis against the app's own /openapi.json, in-process on a private fakeredis.

Every operation the document describes gets generated requests, both ones its schema allows
(positive) and ones it forbids (negative). Every response must be no 5xx, have a status code,
content type and headers the document lists for the operation, and a body matching the
document's schema for that status; every forbidden request must be refused with a 4xx; and
after every call, every key in Redis starts with the app's prefix. Under the `gate` Hypothesis
profile of `make test` (tests/conftest.py) the examples are the same every run; `make fuzz`
draws new ones, ten times as many.

A process is registered before fuzzing, and part of the generated key requests, key
listings and reads of the process and its keys are steered to it, so grants succeed too; each
lease granted is then renewed and released, so the success responses of PATCH and DELETE are
checked as well.

The schemathesis pytest plugin's lazy loader (`schemathesis.pytest.from_fixture`) does not run
on pytest 9.2 (it sets `Function._nodeid`, which pytest renamed), and loading the schema at
import time would start the app whenever the suite is collected. So each operation is a plain
Hypothesis test over `APIOperation.as_strategy()`, schemathesis's public strategy API.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import fakeredis
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from coordinator import openapi
from coordinator.app import ROUTES, create_app
from coordinator.config import Settings

PREFIX = "fuzz"
TARGET = "fuzz-target"
TARGET_KEYS = 1000
# Generated examples per operation and mode: 40 under the `gate` profile of `make test`, the same
# 40 every run (10 operations x 2 modes x 40 stays well under a minute on fakeredis); ten times
# as many, new every run, under `make fuzz`'s `explore` profile (tests/conftest.py), which
# raises Hypothesis's default of 100 examples to 1000.
MAX_EXAMPLES = 40 * settings.default.max_examples // 100
# The deployment's maximum key set size: a generated registration asks for at most this many
# keys (more is the documented 422), so listing a generated process stays quick.
MAX_KEY_SET_SIZE = 1000
# A generated wait on a busy process would hold the run for up to 60 s; waits are cut to this.
MAX_WAIT_SECONDS = 0.05

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    # A request the schema forbids is refused with a 4xx (checked on negative cases only).
    negative_data_rejection,
]

GRANT = ("POST", "/api/v1/process/batch_keys")
KEYS = "/api/v1/process/batch_keys/{id}"
LIST_KEYS = ("GET", KEYS)
GET_PROCESS = ("GET", "/api/v1/process/{process_name}")
GET_KEY = ("GET", "/api/v1/process/{process_name}/keys/{key}")


def _breakable(item: dict) -> bool:
    """Whether an operation takes input a negative case could break: a body, or a parameter
    with a constraint (any string is a valid unconstrained one, so it has no negative)."""
    return bool(item.get("requestBody")) or any(
        p["schema"] != {"type": "string"} for p in item.get("parameters", [])
    )


# Every operation of the document (read from the code that serves it, so none is missed),
# with whether it takes any input a negative case could break.
OPERATIONS = [
    (method.upper(), path, _breakable(item))
    for path, methods in openapi.document()["paths"].items()
    for method, item in methods.items()
]
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path, has_input in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if has_input or mode is GenerationMode.POSITIVE
]


class Fuzz:
    """The app under test on its own Redis server, its schema, and what the run sent."""

    def __init__(self) -> None:
        server = fakeredis.FakeServer()
        redis = fakeredis.FakeAsyncRedis(decode_responses=True, server=server)
        # Schemathesis calls the app as host "testserver": a name the service must be told of.
        settings = Settings(
            key_prefix=PREFIX, max_key_set_size=MAX_KEY_SET_SIZE, allowed_hosts=("testserver",)
        )
        self.app = create_app(settings, redis=redis)
        # Schemathesis runs the app's lifespan itself, on its own event loop thread.
        self.schema = schemathesis.openapi.from_asgi("/openapi.json", self.app)
        # A client of the same server, for the test's own look at Redis.
        self.inspect = fakeredis.FakeRedis(decode_responses=True, server=server)
        self.examples: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()

    def call(self, case: schemathesis.Case) -> schemathesis.Response:
        response = case.call_and_validate(checks=CHECKS)
        self.statuses[(case.operation.label, response.status_code)] += 1
        return response

    def keys_outside_prefix(self) -> list[str]:
        return [key for key in self.inspect.scan_iter() if not key.startswith(f"{PREFIX}:")]


@pytest.fixture(scope="module")
def fuzz() -> Iterator[Fuzz]:
    state = Fuzz()
    register = state.schema["/api/v1/process"]["POST"].Case(
        body={"process_name": TARGET, "key_set_size": TARGET_KEYS}
    )
    assert state.call(register).status_code == 201
    yield state
    assert state.keys_outside_prefix() == []


def _steer(case: schemathesis.Case, method: str, path: str) -> None:
    """Aim a positive case at the registered process (and keep any wait short)."""
    if (method, path) == GRANT and isinstance(case.body, dict):
        case.body["process_name"] = TARGET
        case.body.pop("wait_seconds", None)
    elif (method, path) == LIST_KEYS:
        case.path_parameters = {**(case.path_parameters or {}), "id": TARGET}
    elif (method, path) == GET_PROCESS:
        case.path_parameters = {**(case.path_parameters or {}), "process_name": TARGET}
    elif (method, path) == GET_KEY:
        key = (case.path_parameters or {}).get("key")
        key = key % TARGET_KEYS if isinstance(key, int) else 0
        case.path_parameters = {"process_name": TARGET, "key": key}


def _cap_wait(case: schemathesis.Case) -> None:
    """A valid wait is cut short; an invalid one is left for the service to refuse."""
    wait = case.body.get("wait_seconds") if isinstance(case.body, dict) else None
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 60:
        case.body["wait_seconds"] = min(wait, MAX_WAIT_SECONDS)


def _renew_and_release(fuzz: Fuzz, external_id: str) -> None:
    operations = fuzz.schema[KEYS]
    renew = operations["PATCH"].Case(
        path_parameters={"id": external_id}, body={"lease_seconds": 60}
    )
    assert fuzz.call(renew).status_code == 200
    release = operations["DELETE"].Case(
        path_parameters={"id": external_id}, query={"outcome": "completed"}
    )
    assert fuzz.call(release).status_code == 200


def test_every_operation_is_fuzzed() -> None:
    """Every route the app serves is an operation of the document, and every operation gets
    positive cases, and negative ones too when it takes input."""
    template = re.compile(r"\{[^}]*\}")
    served = {
        (method, template.sub("{}", route.path))
        for route in ROUTES
        for method in (route.methods or set()) - {"HEAD"}
    }
    cased = {tuple(case.values) for case in CASES}
    fuzzed = {(method, template.sub("{}", path)) for method, path, _ in cased}
    assert served <= fuzzed, served - fuzzed
    for method, path, has_input in OPERATIONS:
        assert (method, path, GenerationMode.POSITIVE) in cased
        assert ((method, path, GenerationMode.NEGATIVE) in cased) == has_input


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_every_response_is_described_and_never_5xx(
    fuzz: Fuzz, method: str, path: str, mode: GenerationMode
) -> None:
    operation = fuzz.schema[path][method]
    label = f"{method} {path} {mode.value}"

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(generation_mode=mode), steer=st.booleans())
    def run(case: schemathesis.Case, steer: bool) -> None:
        fuzz.examples[label] += 1
        if steer and mode is GenerationMode.POSITIVE:
            _steer(case, method, path)
        _cap_wait(case)
        response = fuzz.call(case)
        if (method, path) == GRANT and response.status_code == 201:
            _renew_and_release(fuzz, response.json()["external_id"])
        assert fuzz.keys_outside_prefix() == []

    run()
    assert fuzz.examples[label] >= 1
