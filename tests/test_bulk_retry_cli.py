"""Bulk redrive from the command line and the blocking clients: `coordinator key retry NAME
--quarantined`, `key retry NAME K1 K2 ...`, and retry_keys / retry_quarantined on both
transports, against one `coordinator serve`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coordinator.client import Coordinator, HttpCoordinator, RedisCoordinator
from coordinator.models import Redrive
from tests import test_cli
from tests.test_cli import API, Cli, Server, assert_error

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli, name = test_cli.server, test_cli.cli, test_cli.name


def _quarantine(server: Server, name: str, keys: int, failing: int) -> None:
    """A `once` process of `keys` keys whose first `failing` leases fail once and are
    quarantined (max_attempts 1)."""
    body = {"process_name": name, "key_set_size": keys, "mode": "once", "max_attempts": 1}
    assert server.api.post(f"{API}/process", json=body).status_code == 201
    for _ in range(failing):
        lease = server.acquire(name)
        ended = server.api.delete(
            f"{API}/process/batch_keys/{lease['external_id']}", params={"outcome": "failed"}
        )
        assert ended.json()["state"] == "quarantined", ended.text


def _states(server: Server, name: str) -> list[str]:
    return [key["state"] for key in server.keys(name)]


def test_key_retry_quarantined_prints_one_line_of_counts(
    cli: Cli, server: Server, name: str
) -> None:
    _quarantine(server, name, 5, 3)
    printed = cli.ok("key", "retry", name, "--quarantined")
    assert printed == "retried 3 keys: 3 were quarantined, 0 in backoff, 0 neither\n"
    assert _states(server, name) == ["free"] * 5
    # Nothing is quarantined now: a second redrive retries nothing, in JSON too.
    again = cli.json("key", "retry", name, "--quarantined")
    assert again == {"retried": 0, "quarantined": 0, "backoff": 0, "other": 0}


def test_key_retry_of_several_keys_counts_them_by_state(
    cli: Cli, server: Server, name: str
) -> None:
    _quarantine(server, name, 5, 2)
    done = cli.json("key", "retry", name, "0", "1", "4")
    assert done == {"retried": 3, "quarantined": 2, "backoff": 0, "other": 1}
    assert _states(server, name) == ["free"] * 5
    # One key prints the key, as before.
    assert cli.json("key", "retry", name, "0")["state"] == "free"


def test_key_retry_refuses_a_key_outside_the_process_and_changes_nothing(
    cli: Cli, server: Server, name: str
) -> None:
    _quarantine(server, name, 3, 2)
    assert_error(cli("key", "retry", name, "0", "3"), 1, "'keys'", "holds 3")
    assert _states(server, name) == ["quarantined", "quarantined", "free"]


def test_key_retry_needs_keys_or_quarantined_not_both(cli: Cli, name: str) -> None:
    for args in ([], ["0", "--quarantined"]):
        result = cli("key", "retry", name, *args)
        assert result.returncode == 2, result.stderr
        assert "--quarantined" in result.stderr


@pytest.fixture(params=["http", "redis"])
def client(request: pytest.FixtureRequest, server: Server) -> Iterator[Coordinator]:
    """The blocking client over each transport, on the served process's Redis."""
    made = (
        HttpCoordinator(server.base)
        if request.param == "http"
        else RedisCoordinator(server.redis_url)
    )
    with made:
        yield made


def test_the_clients_retry_a_list_and_every_quarantined_key(
    client: Coordinator, server: Server, name: str
) -> None:
    _quarantine(server, name, 6, 4)
    assert client.retry_keys(name, [0, 5]) == Redrive(quarantined=1, other=1)
    assert client.retry_quarantined(name) == Redrive(quarantined=3)
    assert _states(server, name) == ["free"] * 6
    current = client.process(name).pass_
    assert current is not None
    assert (current.completed_at, current.keys_quarantined) == (None, 0)
