"""Listing a large process: pages with ?limit&after and a Link header, or one streamed array."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio

KEYS = "/api/v1/process/batch_keys"


async def test_pages_walk_every_key_once(client: httpx.AsyncClient, register) -> None:
    name = (await register(key_set_size=2500))["process_name"]
    seen: list[int] = []
    url: str | None = f"{KEYS}/{name}?limit=1000"
    pages = 0
    while url:
        response = await client.get(url)
        assert response.status_code == 200
        seen += [row["key"] for row in response.json()]
        pages += 1
        url = response.links.get("next", {}).get("url")
    assert seen == list(range(2500))
    assert pages == 3


async def test_a_page_starts_after_the_given_key(client: httpx.AsyncClient, register) -> None:
    name = (await register(key_set_size=10))["process_name"]
    response = await client.get(f"{KEYS}/{name}", params={"limit": 3, "after": 4})
    assert [row["key"] for row in response.json()] == [5, 6, 7]
    assert response.links["next"]["url"].endswith(f"/{name}?limit=3&after=7")
    last = await client.get(f"{KEYS}/{name}", params={"limit": 3, "after": 7})
    assert [row["key"] for row in last.json()] == [8, 9]
    assert "link" not in last.headers
    past = await client.get(f"{KEYS}/{name}", params={"limit": 3, "after": 9})
    assert past.json() == []


async def test_a_page_shows_leases(client: httpx.AsyncClient, register) -> None:
    name = (await register(key_set_size=5))["process_name"]
    granted = await client.post(KEYS, json={"process_name": name, "machine": "m"})
    page = (await client.get(f"{KEYS}/{name}", params={"limit": 2})).json()
    assert page[0]["external_id"] == granted.json()["external_id"]
    assert page[1]["external_id"] is None


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 10_001}, {"limit": "x"}, {"after": "-2"}, {"after": "1.5"}],
)
async def test_bad_paging_is_422(client: httpx.AsyncClient, register, params) -> None:
    name = (await register(key_set_size=3))["process_name"]
    response = await client.get(f"{KEYS}/{name}", params=params)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_field"
    assert next(iter(params)) in response.json()["detail"]


async def test_the_whole_list_streams_as_one_array(client: httpx.AsyncClient, register) -> None:
    name = (await register(key_set_size=3001))["process_name"]
    async with client.stream("GET", f"{KEYS}/{name}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert "content-length" not in response.headers  # produced as it is read
        body = await response.aread()
    rows = httpx.Response(200, content=body).json()
    assert [row["key"] for row in rows] == list(range(3001))


async def test_an_unknown_process_is_still_404(client: httpx.AsyncClient) -> None:
    for params in ({}, {"limit": 5}):
        response = await client.get(f"{KEYS}/no-such-process", params=params)
        assert response.status_code == 404
        assert response.json()["code"] == "unknown_process"
