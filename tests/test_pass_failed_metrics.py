"""A failed pass shows in the metrics: the per-process gauge
`coordinator_process_pass_failed`, its total over every process, and a grant refused
`pass_failed` counted as its own outcome (not as a shortage of keys)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Register
from tests.test_metrics import KEYS, _grant, client, fresh, value

pytestmark = pytest.mark.anyio

__all__ = ["client"]  # test_metrics's client: the app with a fast metrics refresh

FAILED = "coordinator_process_pass_failed"
TOTAL = "coordinator_processes_pass_failed"


async def test_a_failed_pass_is_a_gauge_a_total_and_a_grant_outcome(
    client: httpx.AsyncClient, register: Register
) -> None:
    name = (await register(key_set_size=2, mode="once", max_failed_keys=0))["process_name"]
    other = (await register(key_set_size=1, mode="once"))["process_name"]
    samples = await fresh(client)
    assert (value(samples, FAILED, process=name), value(samples, TOTAL)) == (0, 0)

    lease = (await _grant(client, name)).json()["external_id"]
    assert (await client.delete(f"{KEYS}/{lease}?outcome=fatal")).status_code == 200
    refused = await _grant(client, name)
    assert (refused.status_code, refused.json()["code"]) == (409, "pass_failed")
    # A pass that merely completes is not failed.
    done = (await _grant(client, other)).json()["external_id"]
    assert (await client.delete(f"{KEYS}/{done}")).status_code == 200

    samples = await fresh(client)
    assert value(samples, FAILED, process=name) == 1
    assert value(samples, FAILED, process=other) == 0
    assert value(samples, TOTAL) == 1
    assert value(samples, "coordinator_process_pass_complete", process=name) == 1
    assert value(samples, "coordinator_grants_total", outcome="pass_failed") == 1
    assert value(samples, "coordinator_grants_total", outcome="no_free_key") == 0

    assert (await client.post(f"/api/v1/process/{name}/passes")).status_code == 201
    samples = await fresh(client)
    assert (value(samples, FAILED, process=name), value(samples, TOTAL)) == (0, 0)
