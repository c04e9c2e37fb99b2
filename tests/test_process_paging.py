"""The process list pages: ?limit&after&prefix with a Link header, a streamed whole list in
bounded chunks, and a scoped token's list read from only the names it may see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from coordinator import registry, store
from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from coordinator.keys import KeySpace
from coordinator.name_ranges import NameRange, ranges
from tests.conftest import serve

pytestmark = pytest.mark.anyio

PROCESSES = "/api/v1/process"
KEYS = "/api/v1/process/batch_keys"
# The most one read of a listing may take, from the measured cost, so that a chunk holds
# Valkey under ~5 ms and the server's loop under ~10 ms: 1,000 touched keys held Valkey
# 3.6-8 ms; 500 names took 18 ms of the server's CPU to read and build.
KEYS_PER_READ_MAX = 500
NAMES_PER_READ_MAX = 200


async def _register_all(
    client: httpx.AsyncClient, names: list[str], headers: dict[str, str] | None = None
) -> None:
    """Register one-key processes, a few at a time (a client's connection pool is bounded)."""
    for start in range(0, len(names), 20):
        answers = await asyncio.gather(
            *(
                client.post(PROCESSES, json={"process_name": n, "key_set_size": 1}, headers=headers)
                for n in names[start : start + 20]
            )
        )
        assert [a.status_code for a in answers] == [201] * len(answers), answers[0].text


async def _walk(client: httpx.AsyncClient, url: str) -> tuple[list[str], list[str]]:
    """Every name of the pages from `url` on, and each page's Link (if any)."""
    seen: list[str] = []
    links: list[str] = []
    following: str | None = url
    while following:
        response = await client.get(following)
        assert response.status_code == 200, response.text
        seen += [p["process_name"] for p in response.json()]
        following = response.links.get("next", {}).get("url")
        if following:
            links.append(response.headers["link"])
    return seen, links


async def test_pages_walk_every_name_once_in_order(client: httpx.AsyncClient) -> None:
    names = [f"walk-{i:02d}" for i in range(23)]
    await _register_all(client, [*reversed(names), "other-1", "wal"])
    seen, links = await _walk(client, f"{PROCESSES}?prefix=walk-&limit=5")
    assert seen == names
    assert len(links) == 4  # five pages: 5, 5, 5, 5, 3
    assert all("prefix=walk-" in link for link in links)
    everything, _ = await _walk(client, f"{PROCESSES}?limit=7")
    assert everything == sorted([*names, "other-1", "wal"])


async def test_the_link_header_names_the_next_page(client: httpx.AsyncClient) -> None:
    await _register_all(client, ["ab-1", "ab-2", "ab-3", "ac-1"])
    first = await client.get(PROCESSES, params={"prefix": "ab", "limit": 2})
    assert [p["process_name"] for p in first.json()] == ["ab-1", "ab-2"]
    assert first.headers["link"] == '</api/v1/process?limit=2&after=ab-2&prefix=ab>; rel="next"'
    last = await client.get(PROCESSES, params={"prefix": "ab", "limit": 2, "after": "ab-2"})
    assert [p["process_name"] for p in last.json()] == ["ab-3"]
    assert "link" not in last.headers
    # A page exactly full has no next page either: the read looks one name past it.
    exact = await client.get(PROCESSES, params={"prefix": "ab", "limit": 3})
    assert len(exact.json()) == 3
    assert "link" not in exact.headers
    past = await client.get(PROCESSES, params={"limit": 2, "after": "zz"})
    assert (past.status_code, past.json()) == (200, [])
    # `after` before the prefix's names starts at the first of them.
    early = await client.get(PROCESSES, params={"prefix": "ac", "after": "aa", "limit": 5})
    assert [p["process_name"] for p in early.json()] == ["ac-1"]
    assert early.json()[0]["key_set_size"] == 1


async def test_changes_between_pages_repeat_no_name(client: httpx.AsyncClient) -> None:
    names = [f"live-{i:02d}" for i in range(0, 40, 2)]  # live-00, live-02, ... live-38
    await _register_all(client, names)
    seen: list[str] = []
    url: str | None = f"{PROCESSES}?prefix=live-&limit=4"
    deleted_ahead: set[str] = set()  # deleted before the listing reached them
    added_ahead: set[str] = set()  # registered past the listing's cursor
    for step in range(1, 20):
        if url is None:
            break
        response = await client.get(url)
        seen += [p["process_name"] for p in response.json()]
        url = response.links.get("next", {}).get("url")
        cursor = seen[-1]
        # Between pages: a name before the cursor and one past it, a deletion of a name
        # already listed and of one not yet reached.
        for name in (f"live-{step:02d}a", f"live-{39 - step:02d}b"):
            await _register_all(client, [name])
            if name > cursor:
                added_ahead.add(name)
        for name in (seen[0], names[-step]):
            if name in deleted_ahead or (await client.delete(f"{PROCESSES}/{name}")).is_error:
                continue
            if name > cursor:
                deleted_ahead.add(name)
    assert url is None
    assert len(seen) == len(set(seen)), "a name was listed twice"
    assert seen == sorted(seen)
    assert set(names) - deleted_ahead <= set(seen)
    assert added_ahead <= set(seen)
    assert not deleted_ahead & set(seen)
    # The walk did meet both kinds of change.
    assert deleted_ahead
    assert added_ahead


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 10_001},
        {"limit": "x"},
        {"after": ""},
        {"after": "-x"},
        {"after": "a b"},
        {"prefix": "-x"},
        {"prefix": "a/b"},
        {"prefix": "p" * 129},
    ],
)
async def test_bad_paging_is_a_problem(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    response = await client.get(PROCESSES, params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "invalid_field"
    assert problem["status"] == 422
    assert next(iter(params)) in problem["detail"]


async def test_the_whole_list_streams_in_chunks_and_equals_the_pages(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so a short list still crosses several of them.
    monkeypatch.setattr(registry, "PROCESS_CHUNK", 4)
    names = [f"all-{i:02d}" for i in range(13)]
    await _register_all(client, names)
    async with client.stream("GET", PROCESSES) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert "content-length" not in response.headers  # produced as it is read
        body = await response.aread()
    whole = httpx.Response(200, content=body).json()
    pages: list[dict[str, Any]] = []
    url: str | None = f"{PROCESSES}?limit=3"
    while url:
        page = await client.get(url)
        pages += page.json()
        url = page.links.get("next", {}).get("url")
    assert whole == pages
    assert [p["process_name"] for p in whole] == names
    prefixed = (await client.get(PROCESSES, params={"prefix": "all-1"})).json()
    assert [p["process_name"] for p in prefixed] == names[10:]
    assert (await client.get(PROCESSES, params={"prefix": "none"})).json() == []


def test_name_ranges_of_a_scope() -> None:
    assert ranges("", None) == [NameRange("")]
    # Nested runs collapse into the outer one; an exact name inside a run is the run's.
    assert ranges("", ("reports-*", "reports-2024-*", "reports-x", "nightly")) == [
        NameRange("nightly", exact=True),
        NameRange("reports-"),
    ]
    # A wildcard further in reads the run of the literal start (filtered afterwards).
    assert ranges("", ("a?c", "*-daily")) == [NameRange("")]
    assert ranges("", ("job-?-x",)) == [NameRange("job-")]
    # The listing's prefix narrows each run, or leaves it out.
    assert ranges("reports-2", ("reports-*", "nightly")) == [NameRange("reports-2")]
    assert ranges("n", ("reports-*", "nightly", "n*")) == [NameRange("n")]
    assert ranges("x", ("reports-*", "nightly")) == []


@pytest.fixture
async def scoped(valkey_redis: Redis, prefix: str) -> AsyncIterator[dict[str, Any]]:
    """An app on the real Valkey with an admin, a `nightly-*` worker and a one-name worker."""
    admin, admin_line = new_token("admin")
    nightly, nightly_line = new_token("worker", "nightly-*")
    single, single_line = new_token("worker", "reports-7")
    odd, odd_line = new_token("worker", "*-7")
    settings = Settings(
        key_prefix=prefix, tokens=";".join([admin_line, nightly_line, single_line, odd_line])
    )
    async with serve(create_app(settings, redis=valkey_redis)) as http:
        yield {
            "http": http,
            "redis": valkey_redis,
            "prefix": prefix,
            "admin": {"Authorization": f"Bearer {admin}"},
            "nightly": {"Authorization": f"Bearer {nightly}"},
            "single": {"Authorization": f"Bearer {single}"},
            "odd": {"Authorization": f"Bearer {odd}"},
        }


async def _calls(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_scoped_token_lists_and_reads_only_its_processes(
    scoped: dict[str, Any],
) -> None:
    http: httpx.AsyncClient = scoped["http"]
    others = [f"reports-{i}" for i in range(150)]
    nightly = ["nightly-a", "nightly-b", "nightly-c"]
    names = [*others, *nightly]
    await _register_all(http, names, scoped["admin"])

    async def listed(token: str, **params: Any) -> tuple[list[str], int]:
        """The names the token is shown, and how many processes were read for it."""
        before = await _calls(scoped["redis"], "hmget")
        response = await http.get(PROCESSES, params=params, headers=scoped[token])
        assert response.status_code == 200, response.text
        read = await _calls(scoped["redis"], "hmget") - before
        return [p["process_name"] for p in response.json()], read

    assert await listed("nightly") == (nightly, 3)
    assert await listed("nightly", limit=2) == (nightly[:2], 3)  # one past the page
    assert await listed("single") == (["reports-7"], 1)
    assert await listed("single", prefix="nightly") == ([], 0)
    # A pattern with no literal start is read whole and filtered: still only its names shown.
    odd, _ = await listed("odd")
    assert odd == ["reports-7"]
    everything, read = await listed("admin")
    assert (everything, read) == (sorted(names), len(names))
    # The pages a scoped token follows hold only its names too.
    first = await http.get(PROCESSES, params={"limit": 1}, headers=scoped["nightly"])
    assert [p["process_name"] for p in first.json()] == ["nightly-a"]
    assert "after=nightly-a" in first.headers["link"]


async def test_listings_read_in_bounded_chunks(scoped: dict[str, Any]) -> None:
    """Each read of a streamed listing takes a bounded number of names or keys, however long
    the list: counted in Valkey's own SLOWLOG (every command logged while this runs)."""
    http: httpx.AsyncClient = scoped["http"]
    redis: Redis = scoped["redis"]
    names = [f"chunked-{i:04d}" for i in range(1100)]
    await _register_all(http, names, scoped["admin"])
    big = "chunked-keys"
    registered = await http.post(
        PROCESSES, json={"process_name": big, "key_set_size": 1500}, headers=scoped["admin"]
    )
    assert registered.status_code == 201
    config = await redis.config_get("slowlog-*")
    try:
        await redis.config_set("slowlog-max-len", 20_000)
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.slowlog_reset()
        listed = await http.get(PROCESSES, params={"prefix": "chunked-"}, headers=scoped["admin"])
        keys = await http.get(f"{KEYS}/{big}", headers=scoped["admin"])
        log = await redis.slowlog_get(20_000)
    finally:
        await redis.config_set("slowlog-log-slower-than", config["slowlog-log-slower-than"])
        await redis.config_set("slowlog-max-len", config["slowlog-max-len"])
    assert len(listed.json()) == 1101
    assert [k["key"] for k in keys.json()] == list(range(1500))
    commands = [_args(entry) for entry in log]
    name_reads = [c for c in commands if c[0].upper() == "ZRANGEBYLEX"]
    assert not [c for c in commands if c[0].upper() == "ZRANGE"], "read the registry whole"
    assert len(name_reads) >= 1101 / NAMES_PER_READ_MAX
    assert all(int(c[c.index("LIMIT") + 2]) <= NAMES_PER_READ_MAX for c in name_reads)
    # inspect.lua's calls: EVALSHA sha 5 <its five keys> first count
    inspect = KeySpace(scoped["prefix"]).process(big).of("inspect")
    counts = [int(c[9]) for c in commands if c[0].upper() == "EVALSHA" and c[3:8] == inspect]
    assert counts, "no key listing read was logged"
    assert max(counts) <= KEYS_PER_READ_MAX
    assert sum(counts) >= 1500
    assert store.INSPECT_CHUNK <= KEYS_PER_READ_MAX
    assert registry.PROCESS_CHUNK <= NAMES_PER_READ_MAX


def _args(entry: dict[str, Any]) -> list[str]:
    command = entry["command"]
    text = command.decode("latin-1") if isinstance(command, bytes) else str(command)
    return text.split(" ")
