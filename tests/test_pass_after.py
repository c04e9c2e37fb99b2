"""Starting a pass names the pass it follows, so a start sent twice starts one pass, not two.

`POST .../passes {"after": N}` (Store.start_pass(name, after=N), the clients' start_pass): N the
current pass starts the next one (201); N already followed answers the process in its current
pass (200) and starts nothing; N above the current pass is 404 unknown_pass. Without `after`, a
pass starts whatever the current one is, as before. The store tests run on the real Valkey and
on fakeredis[lua]; the client tests on both transports against a `coordinator serve`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from coordinator.client import Coordinator
from coordinator.errors import InvalidField, UnknownPass
from coordinator.keys import KeySpace
from coordinator.openapi import document
from coordinator.store import Store
from tests import test_client
from tests.test_api_errors import assert_problem

pytestmark = pytest.mark.anyio

# test_client's fixtures: a `coordinator serve` for this module and the blocking client over
# each transport.
server, coordinator = test_client.server, test_client.coordinator


async def _starts(store: Store, name: str) -> int:
    return [e.type for e in await store.events(name, limit=1000)].count("pass-started")


async def test_after_starts_the_next_pass_once(store: Store, new_name) -> None:
    name = new_name()
    await store.register(name, key_set_size=2, mode="once")
    process, started = await store.follow_pass(name, after=1)
    assert started
    assert process.pass_ is not None
    assert process.pass_.number == 2
    # Sent again (its answer lost): nothing starts, the process is as it is.
    again, started = await store.follow_pass(name, after=1)
    assert not started
    assert again == process
    assert (await store.start_pass(name, after=1)).pass_ == process.pass_
    assert await _starts(store, name) == 1
    # The pass after 2 is still open to start; one that never started is unknown.
    with pytest.raises(UnknownPass) as unknown:
        await store.start_pass(name, after=3)
    assert unknown.value.number == 3
    assert (await store.process(name)).pass_ == process.pass_
    third = await store.start_pass(name, after=2)
    assert third.pass_ is not None
    assert third.pass_.number == 3


@pytest.mark.parametrize("after", [0, -1, 1.5, True, "2", 1 << 53])
async def test_a_malformed_after_is_refused(store: Store, new_name, after: Any) -> None:
    name = new_name()
    await store.register(name, key_set_size=1)
    with pytest.raises(InvalidField, match="after"):
        await store.start_pass(name, after=after)


@pytest.mark.parametrize("after", ["0", "01", "1.5", "-1", "9007199254740992", "x"])
async def test_the_script_refuses_a_malformed_after(store: Store, new_name, after: str) -> None:
    name = new_name()
    await store.register(name, key_set_size=1)
    k = KeySpace(store.keys.prefix).process(name)
    assert await store.scripts.call("start_pass", k.of("start_pass"), [100, after]) == [
        6,
        "after",
    ]
    assert await _starts(store, name) == 0


async def test_http_post_passes_with_after(
    client: httpx.AsyncClient, register: Callable[..., Any]
) -> None:
    name = (await register(key_set_size=1))["process_name"]
    url = f"/api/v1/process/{name}/passes"
    first = await client.post(url, json={"after": 1})
    assert first.status_code == 201, first.text
    assert first.json()["pass"]["number"] == 2
    again = await client.post(url, json={"after": 1})
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert_problem(await client.post(url, json={"after": 7}), 404, "unknown_pass")
    assert_problem(await client.post(url, json={"after": 0}), 422, "invalid_field")
    assert_problem(await client.post(url, json={"before": 1}), 422, "invalid_field")
    plain = await client.post(url)  # no body: as before, a pass starts
    assert plain.status_code == 201, plain.text
    assert plain.json()["pass"]["number"] == 3


def test_a_client_start_sent_twice_starts_one_pass(coordinator: Coordinator) -> None:
    name = f"after-{uuid.uuid4().hex[:10]}"
    coordinator.register(name, 2)
    first = coordinator.start_pass(name, after=1)
    again = coordinator.start_pass(name, after=1)
    assert first.pass_ is not None
    assert again.pass_ == first.pass_
    assert first.pass_.number == 2
    with pytest.raises(UnknownPass):
        coordinator.start_pass(name, after=5)


def test_openapi_documents_the_body_and_its_answers() -> None:
    post = document()["paths"]["/api/v1/process/{process_name}/passes"]["post"]
    assert post["requestBody"]["required"] is False
    assert {"200", "201", "404"} <= set(post["responses"])
    schema = document()["components"]["schemas"]["StartPassRequest"]
    assert set(schema["properties"]) == {"after"}
