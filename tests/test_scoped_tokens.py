"""Scoped tokens learn nothing: a lease id outside a token's processes answers exactly as an id
never issued, and admin-only routes refuse a worker before resolving anything."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from coordinator import lease_id
from coordinator.app import create_app
from coordinator.auth import new_token
from coordinator.config import Settings
from tests.conftest import serve

pytestmark = pytest.mark.anyio

API = "/api/v1/process"
KEYS = f"{API}/batch_keys"
ADMIN, ADMIN_LINE = new_token("admin")
WORKER, WORKER_LINE = new_token("worker")
NIGHTLY, NIGHTLY_LINE = new_token("worker", "nightly-*")
NIGHTLY_ADMIN, NIGHTLY_ADMIN_LINE = new_token("admin", "nightly-*")
MALFORMED = "not-a-lease"


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def guarded(valkey_redis: Redis, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    tokens = ";".join([ADMIN_LINE, WORKER_LINE, NIGHTLY_LINE, NIGHTLY_ADMIN_LINE])
    app = create_app(Settings(key_prefix=prefix, tokens=tokens), redis=valkey_redis)
    async with serve(app) as client:
        yield client


async def _ids(client: httpx.AsyncClient) -> dict[str, str]:
    """A live lease of payroll-secret, ids never issued (of a live nightly process and of no
    process) and a malformed one; by what they are."""
    suffix = uuid.uuid4().hex[:8]
    secret, nightly = f"payroll-secret-{suffix}", f"nightly-{suffix}"
    for name in (secret, nightly):
        created = await client.post(API, json={"process_name": name}, headers=_as(ADMIN))
        assert created.status_code == 201, created.text
    granted = await client.post(
        KEYS, json={"process_name": secret, "machine": "m"}, headers=_as(ADMIN)
    )
    assert granted.status_code == 201, granted.text
    return {
        "secret lease": granted.json()["external_id"],
        "never issued, nightly": lease_id.external_id(nightly, 10**9),
        "never issued, no process": lease_id.external_id(f"gone-{suffix}", 1),
        "malformed": MALFORMED,
    }


def _answer(response: httpx.Response, external_id: str) -> tuple[int, Any]:
    """Status and body, the id itself and any request id left out: what may differ."""
    body = response.json()
    assert isinstance(body, dict), body
    body.pop("request_id", None)
    return response.status_code, {
        k: v.replace(external_id, "<id>") if isinstance(v, str) else v for k, v in body.items()
    }


async def _answers(
    client: httpx.AsyncClient, ids: dict[str, str], method: str, path: str, token: str
) -> dict[str, tuple[int, Any]]:
    answers = {}
    for what, external_id in ids.items():
        response = await client.request(
            method, path.format(external_id=external_id), headers=_as(token)
        )
        answers[what] = _answer(response, external_id)
    return answers


@pytest.mark.parametrize(
    ("method", "path", "token", "status"),
    [
        ("PATCH", KEYS + "/{external_id}", NIGHTLY, 404),
        ("DELETE", KEYS + "/{external_id}", NIGHTLY, 404),
        ("DELETE", KEYS + "/{external_id}?outcome=failed", NIGHTLY, 404),
        # A worker: refused for the role, before the id is looked at.
        ("POST", KEYS + "/{external_id}/revoke", NIGHTLY, 403),
        # An admin of nightly-* only: the secret lease is as unknown to it as to the others.
        ("POST", KEYS + "/{external_id}/revoke", NIGHTLY_ADMIN, 404),
        ("PATCH", KEYS + "/{external_id}", NIGHTLY_ADMIN, 404),
    ],
    ids=["renew", "release", "release-failed", "revoke-worker", "revoke-admin", "renew-admin"],
)
async def test_a_lease_outside_the_scope_answers_as_one_never_issued(
    guarded: httpx.AsyncClient, method: str, path: str, token: str, status: int
) -> None:
    ids = await _ids(guarded)
    answers = await _answers(guarded, ids, method, path, token)
    assert len(set(map(repr, answers.values()))) == 1, answers
    answer_status, body = answers["secret lease"]
    assert answer_status == status
    assert "payroll" not in repr(body)
    # And nothing changed: the secret lease is still held, and its holder may renew it.
    renewed = await guarded.patch(
        KEYS + "/" + ids["secret lease"], headers=_as(ADMIN), json={"lease_seconds": 60}
    )
    assert renewed.status_code == 200, renewed.text


async def test_a_worker_gets_the_same_403_on_revoke_whether_the_lease_exists(
    guarded: httpx.AsyncClient,
) -> None:
    ids = await _ids(guarded)
    answers = await _answers(guarded, ids, "POST", KEYS + "/{external_id}/revoke", WORKER)
    assert len(set(map(repr, answers.values()))) == 1, answers
    status, body = answers["secret lease"]
    assert (status, body["code"]) == (403, "forbidden")


async def test_register_checks_the_role_before_the_body(guarded: httpx.AsyncClient) -> None:
    # A body the admin would be told is invalid: the worker hears only that it is no admin.
    for body in ({"process_name": "x", "key_set_size": -1}, {"key_set_size": 1}):
        response = await guarded.post(API, json=body, headers=_as(WORKER))
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "forbidden"
    refused = await guarded.post(API, json={"process_name": "x"}, headers=_as(WORKER))
    assert refused.status_code == 403
