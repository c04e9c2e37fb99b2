"""`coordinator keys`: states as a person reads them, filters, paging, a summary, and a stream
that lists a million keys in little memory."""

from __future__ import annotations

import subprocess
import sys

import orjson

from tests import test_cli
from tests.test_cli import API, KEYS_HEADER, Cli, Server, header, table

# test_cli's fixtures: a `coordinator serve` for this module, the CLI on either transport.
server, cli, name = test_cli.server, test_cli.cli, test_cli.name

# Runs the command given after it and prints its peak resident memory (KB) last on stderr.
PEAK_RSS = (
    "import resource, subprocess, sys;"
    "status = subprocess.call(sys.argv[1:]);"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
    "sys.exit(status)"
)
# A million key objects alone take over 100 MB beyond the interpreter's own (about 40 MB with
# the client's imports): a listing that streams stays well under this, one that holds the
# keys goes well over.
PEAK_RSS_LIMIT_KB = 128 * 1024


def _six_keys_in_every_state(server: Server, name: str) -> None:
    """0 held; 1 revoked, 3 released failed (free, never completed); 2 released completed;
    4 and 5 never leased."""
    server.register(name, keys=6)
    granted = [server.acquire(name) for _ in range(4)]
    assert [g["key"] for g in granted] == [0, 1, 2, 3]
    ended = [
        server.api.post(f"{API}/process/batch_keys/{granted[1]['external_id']}/revoke"),
        server.api.delete(f"{API}/process/batch_keys/{granted[2]['external_id']}"),
        server.api.delete(
            f"{API}/process/batch_keys/{granted[3]['external_id']}", params={"outcome": "failed"}
        ),
    ]
    assert [r.status_code for r in ended] == [200, 200, 200]


def _listed(cli: Cli, *args: str) -> tuple[list[int], str]:
    """The key numbers of a table listing, and its stderr."""
    result = cli("keys", *args)
    assert result.returncode == 0, result.stderr
    assert header(result.stdout) == KEYS_HEADER
    return [int(row["KEY"]) for row in table(result.stdout)], result.stderr


def test_states_filters_paging_and_summary(cli: Cli, server: Server, name: str) -> None:
    _six_keys_in_every_state(server, name)
    result = cli("keys", name)
    assert result.returncode == 0, result.stderr
    assert [row["STATE"] for row in table(result.stdout)] == ["held"] + ["free"] * 5
    assert result.stderr == "6 keys: 1 held, 5 free (4 never completed)\n"

    assert _listed(cli, name, "--state", "held")[0] == [0]
    assert _listed(cli, name, "--state", "free")[0] == [1, 2, 3, 4, 5]
    never, summary = _listed(cli, name, "--state", "never")
    assert never == [1, 3, 4, 5]
    assert summary == "4 shown of 6 keys read: 1 held, 5 free (4 never completed)\n"
    assert _listed(cli, name, "--limit", "2")[0] == [0, 1]
    assert _listed(cli, name, "--after", "1", "--limit", "2")[0] == [2, 3]
    assert _listed(cli, name, "--state", "never", "--after", "1", "--limit", "2")[0] == [3, 4]
    assert _listed(cli, name, "--after", "5")[0] == []

    # --json: JSON Lines, the API's key objects, and no summary.
    as_json = cli("keys", name, "--state", "free", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stderr == ""
    lines = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert lines == server.keys(name)[1:]


def test_released_and_revoked_keys_show_free(cli: Cli, server: Server, name: str) -> None:
    server.register(name, keys=2)
    released, revoked = server.acquire(name), server.acquire(name)
    for command, lease in (("release", released), ("revoke", revoked)):
        printed = cli.ok(command, lease["external_id"])
        (row,) = table(printed)
        # The ended lease is still named, but the key is free.
        assert (row["STATE"], row["EXTERNAL_ID"]) == ("free", lease["external_id"]), command
    assert [row["STATE"] for row in table(cli.ok("keys", name))] == ["free", "free"]


def test_a_million_keys_stream_in_little_memory(cli: Cli, server: Server, name: str) -> None:
    size = 1_000_000
    server.register(name, keys=size)
    with subprocess.Popen(
        [sys.executable, "-c", PEAK_RSS, *cli.argv("keys", name, "--json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as measured:
        assert measured.stdout is not None
        first = measured.stdout.readline()
        lines, tail = 1, b""
        while chunk := measured.stdout.read(1 << 20):
            lines += chunk.count(b"\n")
            tail = (tail + chunk)[-4096:]
        _, stderr = measured.communicate(timeout=60)
    assert measured.returncode == 0, stderr
    assert lines == size
    assert orjson.loads(first)["key"] == 0
    assert orjson.loads(tail.splitlines()[-1])["key"] == size - 1
    peak_kb = int(stderr.decode().split()[-1])
    assert peak_kb < PEAK_RSS_LIMIT_KB, f"peak RSS {peak_kb // 1024} MB"
