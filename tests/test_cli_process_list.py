"""`coordinator process list` pages: it follows the API's Link header page after page (a list
longer than a page is listed whole, once, in name order), filters by --name-prefix, stops at
--limit, and prints what it printed before (the table, or the API's JSON array)."""

from __future__ import annotations

import asyncio
import uuid

from coordinator.client import http
from coordinator.config import Settings
from coordinator.connection import connect
from coordinator.store import Store
from tests import test_cli
from tests.test_cli import API, PROCESS_HEADER, Cli, Server, header, table

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli = test_cli.server, test_cli.cli


def _register(server: Server, names: list[str]) -> None:
    """Register one-key processes straight through the server's store (fast, in parallel)."""

    async def run() -> None:
        redis = connect(server.redis_url, Settings())
        store = Store(redis)
        for start in range(0, len(names), 100):
            await asyncio.gather(*(store.register(n, 1, 60) for n in names[start : start + 100]))
        await store.aclose()
        await redis.aclose()

    asyncio.run(run())


def test_process_list_follows_pages_and_filters(cli: Cli, server: Server) -> None:
    stem = f"pl-{uuid.uuid4().hex[:8]}"
    # One more than a client page, so the HTTP listing needs the Link to the second page.
    names = [f"{stem}-{i:04d}" for i in range(http.PROCESSES_PAGE + 5)]
    _register(server, [*reversed(names), f"{stem}x-other"])
    listed = cli.ok("process", "list", "--name-prefix", f"{stem}-")
    assert header(listed) == PROCESS_HEADER
    rows = table(listed)
    assert [r["PROCESS"] for r in rows] == names
    assert rows[0] == {"PROCESS": names[0], "KEYS": "1", "LEASE_SECONDS": "60"}

    limited = cli.ok("process", "list", "--name-prefix", stem, "--limit", "3")
    assert [r["PROCESS"] for r in table(limited)] == names[:3]

    # --json is the API's own array: the pages of GET /api/v1/process put together.
    pages: list[object] = []
    url: str | None = f"{API}/process?prefix={stem}&limit=400"
    while url:
        page = server.api.get(url)
        pages += page.json()
        url = page.links.get("next", {}).get("url")
    assert cli.json("process", "list", "--name-prefix", stem) == pages
    assert cli.json("process", "list", "--name-prefix", f"{stem}-none") == []
