"""One truth per key: `keys` (table, summary, --json, --state), `key show` and the per-process
gauges all give each key the state the store reads (inspect.lua), in all five states."""

from __future__ import annotations

import time

import orjson
import redis

from coordinator.cli.values import KEY_STATE_CHOICES, NEVER
from coordinator.keys import KeySpace
from coordinator.models import KEY_STATES
from tests import test_cli
from tests.test_cli import API, Cli, Server, table
from tests.test_metrics import parse, value

server, cli, name = test_cli.server, test_cli.cli, test_cli.name

# What _keys_in_every_state leaves each key in.
EXPECTED = {0: "quarantined", 1: "done", 2: "held", 3: "backoff", 4: "free", 5: "free"}
SUMMARY = "6 keys: 1 held, 2 free (2 never completed), 1 done, 1 in backoff, 1 quarantined\n"


def _end(server: Server, external_id: str, outcome: str) -> None:
    response = server.api.delete(
        f"{API}/process/batch_keys/{external_id}", params={"outcome": outcome}
    )
    assert response.status_code == 200, response.text


def _set_backoff(server: Server, name: str, ms: int) -> None:
    """A process has one backoff; the test changes it between failures (release.lua reads it
    from the meta at each release) to get an hour's backoff and one that ends, in one process."""
    with redis.Redis.from_url(server.redis_url, decode_responses=True) as client:
        client.hset(KeySpace().process(name).meta, "backoff_ms", ms)


def _keys_in_every_state(server: Server, name: str) -> None:
    """A `once` process of 6 keys, by real grants and releases: 0 quarantined (two failures in
    a row), 1 done, 2 held, 3 in an hour's backoff, 4 free after a backoff that ended, 5 never
    leased."""
    body = {
        "process_name": name,
        "key_set_size": 6,
        "lease_seconds": 600,
        "mode": "once",
        "max_attempts": 2,
        "retry_backoff_seconds": 0,
    }
    assert server.api.post(f"{API}/process", json=body).status_code == 201
    for _ in range(2):  # a failed key keeps its place first in line, so key 0 comes back
        granted = server.acquire(name)
        assert granted["key"] == 0
        _end(server, granted["external_id"], "failed")
    done, held = server.acquire(name), server.acquire(name)
    assert (done["key"], held["key"]) == (1, 2)
    _end(server, done["external_id"], "completed")
    for key, backoff_ms in ((3, 3_600_000), (4, 1000)):
        _set_backoff(server, name, backoff_ms)
        failed = server.acquire(name)
        assert failed["key"] == key
        _end(server, failed["external_id"], "failed")
    # Key 4's backoff ends; it is still parked, but a grant could hand it out: free.
    deadline = time.monotonic() + 15
    while server.keys(name)[4]["state"] != "free":
        assert time.monotonic() < deadline, server.keys(name)[4]
        time.sleep(0.1)


def test_the_state_names_are_declared_once() -> None:
    assert KEY_STATES == ("free", "held", "done", "backoff", "quarantined")
    assert (*KEY_STATES, NEVER) == KEY_STATE_CHOICES


def test_every_surface_gives_each_key_the_stores_state(cli: Cli, server: Server, name: str) -> None:
    _keys_in_every_state(server, name)
    api = server.keys(name)
    assert {k["key"]: k["state"] for k in api} == EXPECTED

    listed = cli("keys", name)
    assert listed.returncode == 0, listed.stderr
    assert {int(r["KEY"]): r["STATE"] for r in table(listed.stdout)} == EXPECTED
    assert listed.stderr == SUMMARY
    as_json = cli("keys", name, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert [orjson.loads(line) for line in as_json.stdout.splitlines()] == api

    for state in KEY_STATE_CHOICES:
        shown = cli("keys", name, "--state", state)
        assert shown.returncode == 0, (state, shown.stderr)
        keys = [int(r["KEY"]) for r in table(shown.stdout)]
        if state == NEVER:
            assert keys == [4, 5]
        else:
            assert keys == [k for k, s in EXPECTED.items() if s == state], state

    for key, state in EXPECTED.items():
        assert cli.json("key", "show", name, str(key))["state"] == state, key


def test_the_gauges_count_what_their_names_say(server: Server, name: str) -> None:
    _keys_in_every_state(server, name)
    samples = parse(server.api.get("/metrics").text)
    gauges = {
        suffix: value(samples, f"coordinator_process_{suffix}", process=name)
        for suffix in ("keys_held", "keys_free", "keys_quarantined", "keys_in_backoff")
    }
    # Free: grantable only (4 and 5), not done, quarantined or backing off; in backoff: only
    # key 3, not key 4 whose backoff ended.
    assert gauges == {
        "keys_held": 1,
        "keys_free": 2,
        "keys_quarantined": 1,
        "keys_in_backoff": 1,
    }
    assert [k["state"] for k in server.keys(name)].count("free") == gauges["keys_free"]
