"""409 no_free_key's Retry-After is a hint worth obeying: at most RETRY_AFTER_MAX_SECONDS (a
release can come any moment), sooner when the earliest lease expires sooner, and the problem
points to wait_seconds, which learns of a release at once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from coordinator import validation
from coordinator.errors import RETRY_AFTER_MAX_SECONDS, NoFreeKey
from coordinator.store import Store
from tests.conftest import Register
from tests.test_api_errors import API, assert_problem

pytestmark = pytest.mark.anyio

HINT = f"send wait_seconds (up to {validation.WAIT_SECONDS_MAX}) to wait for a release"


def test_the_longest_hint_is_ten_seconds() -> None:
    assert RETRY_AFTER_MAX_SECONDS == 10


async def test_an_hour_lease_says_retry_after_10_and_points_to_waiting(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=1, lease_seconds=3600))["process_name"]
    body = {"process_name": name, "machine": "m"}
    assert (await client.post(f"{API}/process/batch_keys", json=body)).status_code == 201
    response = await client.post(f"{API}/process/batch_keys", json=body)
    problem = assert_problem(response, 409, "no_free_key")
    assert response.headers["retry-after"] == str(RETRY_AFTER_MAX_SECONDS)
    assert name in problem["detail"]
    assert HINT in problem["detail"]


async def test_the_direct_client_carries_the_same_hint(store: Store, new_name: Any) -> None:
    name = new_name()
    await store.register(name, 1, lease_seconds=3600)
    await store.grant(name, "m")
    with pytest.raises(NoFreeKey) as busy:
        await store.grant(name, "m")
    assert busy.value.retry_after_seconds == RETRY_AFTER_MAX_SECONDS
    # The time to the earliest expiry is still there for whoever wants it.
    assert 3590 * 1_000_000 < busy.value.retry_after_us <= 3600 * 1_000_000
    assert HINT in str(busy.value)


@pytest.mark.parametrize(
    ("until_expiry_us", "seconds"),
    [
        (3_600_000_000, 10),
        (10_000_001, 10),
        (10_000_000, 10),
        (9_000_001, 10),
        (9_000_000, 9),
        (4_200_000, 5),
        (1, 1),
        (0, 1),
        (-5, 1),
    ],
)
def test_the_hint_is_the_time_to_the_earliest_expiry_when_sooner(
    until_expiry_us: int, seconds: int
) -> None:
    assert NoFreeKey("p", until_expiry_us).retry_after_seconds == seconds


async def test_the_document_states_the_bound(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    header = paths["/api/v1/process/batch_keys"]["post"]["responses"]["409"]["headers"]
    retry_after = header["Retry-After"]
    assert retry_after["schema"]["maximum"] == RETRY_AFTER_MAX_SECONDS
    assert "wait_seconds" in retry_after["description"]
