"""Ctrl-C while `coordinator run --loop` asks for its next key: the key that grant took is
released `interrupted` (no attempt counted), its command never run, and `run` ends with 130.

The grant's reply is held back by a fault proxy between `run` and Valkey, so the signal lands
while the grant is in flight: the key is already taken in Valkey, its answer not yet read.
"""

from __future__ import annotations

import signal
from pathlib import Path
from urllib.parse import urlsplit

import redis

from tests import test_cli
from tests.faultproxy import FaultProxy
from tests.test_cli import API, Cli, Server, stop, wait_until_started

# test_cli's fixtures: a `coordinator serve` for this module (its Valkey is what we proxy).
server, name = test_cli.server, test_cli.name

# Says it has started ($1), notes each run ($3), then works until told to finish ($2).
WORKS_UNTIL_TOLD = 'echo ran >> "$3"; : > "$1"; while [ ! -e "$2" ]; do sleep 0.05; done'
# Under the client's Redis timeout (2 s), so a late reply is no outage; `run` cut short at the
# signal closes its connection before the grant's answer comes, and the answer is lost.
REPLY_DELAY_SECONDS = 1.0


def _until_granting(valkey_url: str, machine: str) -> None:
    """Until Valkey runs a grant for `machine` (only a grant's arguments name the machine)."""
    valkey = redis.Redis.from_url(valkey_url, socket_timeout=15, decode_responses=True)
    try:
        with valkey.monitor() as monitor:
            while True:  # a socket timeout if no grant ever comes
                command = monitor.next_command()["command"]
                if command.startswith("EVALSHA") and machine in command:
                    return
    finally:
        valkey.close()


def test_ctrl_c_during_a_grant_releases_the_key_it_took(
    server: Server, name: str, tmp_path: Path
) -> None:
    body = {"process_name": name, "key_set_size": 1, "lease_seconds": 60}
    assert server.api.post(f"{API}/process", json=body).status_code == 201
    valkey = urlsplit(server.redis_url)
    assert valkey.hostname is not None
    assert valkey.port is not None
    ready, go, runs = tmp_path / "ready", tmp_path / "go", tmp_path / "runs"
    machine = f"grant-probe-{name}"
    with FaultProxy(valkey.hostname, valkey.port).threaded() as proxy:
        proxied = valkey._replace(netloc=f"{valkey.netloc.rpartition('@')[0]}@{proxy.url[8:]}")
        cli = Cli("redis", ["--redis-url", proxied.geturl()])
        script = ["sh", "-c", WORKS_UNTIL_TOLD, "sh", str(ready), str(go), str(runs)]
        running = cli.start("run", name, "--loop", "--machine", machine, "--", *script)
        try:
            wait_until_started(running, ready)  # the first command runs under the one key
            proxy.faults.latency_down = REPLY_DELAY_SECONDS
            go.touch()  # it ends; its release, then the next grant, answer late
            _until_granting(server.redis_url, machine)
            running.send_signal(signal.SIGINT)
            proxy.faults.clear()  # what Valkey answers from now on comes at once
            _, err = running.communicate(timeout=30)
        finally:
            stop(running)
    assert running.returncode == 130, err
    response = server.api.get(f"{API}/process/{name}/keys/0")
    assert response.status_code == 200, response.text
    key = response.json()
    # Given back at once, not left held until its lease expires.
    assert (key["state"], key["external_id"], key["attempts"]) == ("free", None, 0), err
    assert runs.read_text().splitlines() == ["ran"]  # the second grant's command never ran
    assert err.splitlines()[-1] == (
        "coordinator: stopped by SIGINT after 2 keys, 0 failed, 1 interrupted"
    )
