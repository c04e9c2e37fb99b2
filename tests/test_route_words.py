"""Route words are not process names (coordinator/route_words.py): registration refuses them on
every path (HTTP, the store a direct worker uses, the CLI), and a process so named by an older
version is still read, worked and deleted."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from coordinator import validation
from coordinator.app import ROUTES, create_app
from coordinator.config import Settings
from coordinator.embedded import EmbeddedValkey
from coordinator.errors import InvalidField
from coordinator.openapi import document
from coordinator.route_words import ROUTE_WORDS, words_where_names_stand
from coordinator.store import Store
from tests.conftest import serve
from tests.readme_shapes import README
from tests.test_api_errors import API, assert_invalid_field

pytestmark = pytest.mark.anyio

REFUSAL = "may not be 'batch_keys': the API's paths use it as a word (reserved: batch_keys)"


@pytest.fixture
async def valkey_client(valkey_redis: Redis, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(Settings(key_prefix=prefix), redis=valkey_redis)) as http:
        yield http


async def _keys_under(redis: Redis, prefix: str) -> list[str]:
    return sorted([str(k) async for k in redis.scan_iter(match=f"{prefix}*")])


def test_the_reserved_words_are_the_route_tables_own() -> None:
    """Every literal segment of ROUTES that stands where a process name stands is reserved,
    and nothing else: a route added with a new such word must reserve it."""
    assert words_where_names_stand(route.path for route in ROUTES) == set(ROUTE_WORDS)
    assert "batch_keys" in ROUTE_WORDS


def test_the_word_finder_sees_a_word_only_where_a_name_stands() -> None:
    """A literal after the segments that precede a name is a word; a variable there is not,
    nor a literal after other segments, nor one where no name stands."""
    paths = ["/a/{process_name}", "/a/grants", "/a/x/y", "/a/{id}", "/b/words", "/c/words/d"]
    assert words_where_names_stand(paths) == {"grants", "x"}
    assert words_where_names_stand(["/a/grants", "/a/{id}"]) == set()


@pytest.mark.parametrize("word", ROUTE_WORDS)
async def test_registering_a_route_word_is_422_and_changes_nothing(
    valkey_client: httpx.AsyncClient, valkey_redis: Redis, prefix: str, word: str
) -> None:
    before = await _keys_under(valkey_redis, prefix)
    response = await valkey_client.post(f"{API}/process", json={"process_name": word})
    assert_invalid_field(response, "process_name")
    body = response.json()
    assert f"reserved: {', '.join(ROUTE_WORDS)}" in body["detail"]
    assert response.headers["content-type"] == "application/problem+json"
    assert await _keys_under(valkey_redis, prefix) == before
    assert (await valkey_client.get(f"{API}/process")).json() == []


async def test_a_route_words_spelling_in_another_case_is_a_name(
    valkey_client: httpx.AsyncClient,
) -> None:
    """Paths match case by case, so `Batch_Keys` shares no route."""
    response = await valkey_client.post(f"{API}/process", json={"process_name": "Batch_Keys"})
    assert response.status_code == 201, response.text
    assert (await valkey_client.get(f"{API}/process/Batch_Keys/events")).status_code == 200


async def test_the_store_refuses_a_route_word_for_direct_workers(
    valkey_redis: Redis, prefix: str
) -> None:
    store = Store(valkey_redis, prefix=prefix)
    try:
        with pytest.raises(InvalidField, match=re.escape(f"'process_name' {REFUSAL}")):
            await store.register("batch_keys", 2)
        assert await _keys_under(valkey_redis, prefix) == []
    finally:
        await store.aclose()


def test_the_cli_says_so_in_one_line(valkey: EmbeddedValkey, prefix: str) -> None:
    argv = ["--redis-url", valkey.url, "--prefix", prefix, "process", "register", "batch_keys"]
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result
    assert result.stdout == ""
    # The CLI names the field as its user knows it (coordinator/cli/messages.py).
    assert result.stderr == f"coordinator: the process name {REFUSAL}\n"


def test_the_readme_names_the_reserved_words() -> None:
    text = " ".join(README.read_text().split())
    found = re.search(r"the words the API's paths use where a name stands — (.*?) —", text)
    assert found, "README.md says which names are reserved"
    assert re.findall(r"`([^`]+)`", found[1]) == list(ROUTE_WORDS)


def test_openapi_says_which_names_are_reserved() -> None:
    name = document()["components"]["schemas"]["RegisterRequest"]["properties"]["process_name"]
    assert name["not"] == {"enum": list(ROUTE_WORDS)}
    assert "batch_keys" in name["description"]


async def test_a_process_named_batch_keys_before_still_works_and_is_deleted(
    valkey_client: httpx.AsyncClient,
    valkey_redis: Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registered by an older version (whose registration took any valid name), the process is
    still read, granted from, listed and deleted over HTTP; only its history is out of HTTP's
    reach (`…/batch_keys/events` lists a process named `events`), readable by a direct worker
    and forgotten on its own once the process is deleted."""
    store = Store(valkey_redis, prefix=prefix)
    try:
        with monkeypatch.context() as old:
            old.setattr(validation, "new_process_name", validation.process_name)
            await store.register("batch_keys", 2)
        process = await valkey_client.get(f"{API}/process/batch_keys")
        assert process.status_code == 200, process.text
        assert process.json()["process_name"] == "batch_keys"
        granted = await valkey_client.post(
            f"{API}/process/batch_keys", json={"process_name": "batch_keys", "machine": "m"}
        )
        assert granted.status_code == 201, granted.text
        keys = await valkey_client.get(f"{API}/process/batch_keys/batch_keys")
        assert [k["machine"] for k in keys.json()] == ["m", None]
        key = await valkey_client.get(f"{API}/process/batch_keys/keys/0")
        assert key.json()["state"] == "held"
        assert (await valkey_client.get(f"{API}/process/batch_keys/passes/1")).status_code == 200
        released = await valkey_client.delete(
            f"{API}/process/batch_keys/{granted.json()['external_id']}"
        )
        assert released.status_code == 200, released.text
        # The one route it cannot reach: this path is the key listing of `events`.
        events = await valkey_client.get(f"{API}/process/batch_keys/events")
        assert events.status_code == 404
        assert events.json()["detail"] == "No process named 'events' is registered."
        assert [e.type for e in await store.events("batch_keys")][:2] == ["registered", "granted"]

        deleted = await valkey_client.delete(f"{API}/process/batch_keys")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["process_name"] == "batch_keys"
        assert (await valkey_client.get(f"{API}/process")).json() == []
        assert await valkey_redis.ttl(store.keys.process("batch_keys").events) > 0
    finally:
        await store.aclose()
