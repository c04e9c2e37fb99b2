"""compose.yaml, the Dockerfile and deploy/nginx/ agree with each other and with the service,
in the ways that made the stack fail under podman-compose; no container engine needed.

`make compose-check` (deploy/compose_check.py) runs the stack for real on Docker or podman.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.cli import listen
from coordinator.config import Settings
from deploy import compose_check

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx" / "coordinator.conf"
START_SCRIPT = ROOT / "deploy" / "nginx" / "start.sh"


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def _dockerfile_instruction(name: str) -> str:
    """The text of the runtime stage's last `name` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = re.findall(rf"^{name}\s+(.+)$", joined, re.M)
    assert found, f"no {name} in the Dockerfile"
    return str(found[-1])


def _dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV, as KEY=value pairs."""
    pairs = re.findall(r'(\w+)=("[^"]*"|\S+)', _dockerfile_instruction("ENV"))
    return {key: value.strip('"') for key, value in pairs}


def _healthcheck_command() -> list[str]:
    command = _dockerfile_instruction("HEALTHCHECK").split(" CMD ", 1)[1]
    parsed: list[str] = json.loads(command)
    return parsed


def _nginx_bind_mounts() -> dict[str, str]:
    """Container path -> repository file, for nginx's bind mounts."""
    mounts = {}
    for volume in _compose()["services"]["nginx"]["volumes"]:
        source, target, *_ = volume.split(":")
        assert source.startswith("./"), f"nginx mounts {source}, not a file of this repository"
        mounts[target] = source
    return mounts


def test_compose_has_no_configs_which_podman_compose_ignores() -> None:
    compose = _compose()
    assert "configs" not in compose
    assert all("configs" not in service for service in compose["services"].values())


def test_api_replicas_are_counted_by_podman_compose_too() -> None:
    api = _compose()["services"]["api"]
    # Without `mode: replicated` spelled out, podman-compose starts one replica.
    assert api["deploy"]["mode"] == "replicated"
    assert api["deploy"]["replicas"] == 3
    assert compose_check.SERVICES["api"] == api["deploy"]["replicas"]
    assert set(compose_check.SERVICES) == set(_compose()["services"])


def test_nginx_runs_the_config_and_start_script_of_this_repository() -> None:
    mounts = _nginx_bind_mounts()
    assert {(ROOT / source).resolve() for source in mounts.values()} == {
        NGINX_CONF,
        START_SCRIPT,
    }
    # The server block replaces the image's default one (port 80) in conf.d.
    assert (ROOT / mounts["/etc/nginx/conf.d/default.conf"]).resolve() == NGINX_CONF
    (script_target,) = [t for t, s in mounts.items() if (ROOT / s).resolve() == START_SCRIPT]
    # Through sh, so the file needs no execute bit and the image no entrypoint hook.
    assert _compose()["services"]["nginx"]["command"] == ["sh", script_target]


def test_nginx_asks_the_resolver_the_start_script_writes_and_no_fixed_one() -> None:
    directives = [line.split("#")[0].strip() for line in NGINX_CONF.read_text().splitlines()]
    # 127.0.0.11 is Docker's embedded DNS only: under podman every request was a 502.
    assert not [d for d in directives if "127.0.0.11" in d or d.startswith("resolver ")]
    (included,) = re.findall(r"^include\s+(\S+);$", "\n".join(directives), re.M)
    assert f"\nresolver_conf={included}\n" in START_SCRIPT.read_text()


def _run_start_script(
    tmp_path: Path, resolv_conf: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """start.sh itself, with its three container paths moved under tmp_path."""
    script = START_SCRIPT.read_text()
    resolver_file = tmp_path / "resolver.conf"
    (tmp_path / "resolv.conf").write_text(resolv_conf)
    for container_path, here in (
        ("\nresolv_conf=/etc/resolv.conf\n", f"\nresolv_conf={tmp_path / 'resolv.conf'}\n"),
        (
            "\nresolver_conf=/etc/nginx/coordinator-resolver.conf\n",
            f"\nresolver_conf={resolver_file}\n",
        ),
        ("exec nginx -g 'daemon off;'", "exec true"),
    ):
        assert script.count(container_path) == 1, container_path
        script = script.replace(container_path, here)
    (tmp_path / "start.sh").write_text(script)
    done = subprocess.run(
        ["sh", str(tmp_path / "start.sh")], capture_output=True, text=True, check=False
    )
    return done, resolver_file


@pytest.mark.parametrize(
    ("resolv_conf", "resolver"),
    [
        # podman (aardvark-dns on the network's gateway), then the host's own resolver.
        ("search dns.podman\nnameserver 172.30.57.1\nnameserver 10.255.255.53\n", "172.30.57.1"),
        # Docker's embedded DNS.
        ("nameserver 127.0.0.11\noptions ndots:0\n", "127.0.0.11"),
        ("# generated\n  nameserver   fd00::1  \nnameserver 10.0.0.2\n", "[fd00::1]"),
    ],
)
def test_start_script_points_nginx_at_the_first_nameserver_only(
    tmp_path: Path, resolv_conf: str, resolver: str
) -> None:
    done, resolver_file = _run_start_script(tmp_path, resolv_conf)
    assert done.returncode == 0, done.stderr
    assert resolver_file.read_text() == f"resolver {resolver} valid=5s ipv6=off;\n"


def test_start_script_refuses_to_start_nginx_without_a_nameserver(tmp_path: Path) -> None:
    done, resolver_file = _run_start_script(tmp_path, "search example\n")
    assert done.returncode == 1
    assert "no nameserver" in done.stderr
    assert not resolver_file.exists()


def test_every_port_on_the_way_in_agrees() -> None:
    env = _dockerfile_env()
    api = _compose()["services"]["api"]
    # The replicas listen where the image's environment says: no flag overrides it.
    for command in (api["command"], json.loads(_dockerfile_instruction("CMD"))):
        assert command[:2] == ["coordinator", "serve"]
        assert not {"--host", "--port"} & set(command)
    port = int(api["environment"].get("COORDINATOR_PORT") or env["COORDINATOR_PORT"])
    config = NGINX_CONF.read_text()
    assert re.findall(r"set \$coordinator_api http://api:(\d+);", config) == [str(port)]
    (listen_port,) = re.findall(r"^\s*listen\s+(\d+);", config, re.M)
    (published,) = _compose()["services"]["nginx"]["ports"]
    found = re.fullmatch(r"([\d.]+):(\$\{\w+:-\d+\}|\d+):(\d+)", published)
    assert found, published
    host, host_port, container_port = found.groups()
    assert container_port == listen_port
    # Loopback only: the replicas run with --insecure-open.
    assert host == compose_check.NGINX_HOST == "127.0.0.1"
    # The host port is the variable the check sets, 8000 as the README says when unset.
    assert host_port == f"${{{compose_check.PORT_VARIABLE}:-8000}}"


def test_image_environment_is_where_coordinator_serve_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _dockerfile_env()
    monkeypatch.setenv("COORDINATOR_HOST", env["COORDINATOR_HOST"])
    monkeypatch.setenv("COORDINATOR_PORT", env["COORDINATOR_PORT"])
    address = listen.address(None, None)
    assert (address.host, address.port) == ("0.0.0.0", 8000)
    # Not the defaults by chance: `serve` reads the variable.
    monkeypatch.setenv("COORDINATOR_PORT", "8123")
    assert listen.address(None, None).port == 8123


class _Reads(dict[str, str]):
    """An empty environment that notes every name asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def test_image_installs_the_extra_that_holds_the_server() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (server,) = [name for name, needs in extras.items() if any("uvicorn" in n for n in needs)]
    installs = re.findall(r"/opt/venv/bin/pip install (.+?) \\$", DOCKERFILE.read_text(), re.M)
    # The plain package is the clients and the CLI: `coordinator serve` needs the extra.
    assert installs == [f'"$(ls /wheels/*.whl)[{server}]"']


def test_every_coordinator_variable_set_is_one_the_service_reads() -> None:
    reads = _Reads()
    Settings.from_env(reads)
    # COORDINATOR_HOST and COORDINATOR_PORT are `serve`'s (the test above).
    known = reads.asked | {"COORDINATOR_HOST", "COORDINATOR_PORT"}
    environment: Mapping[str, str] = _compose()["services"]["api"]["environment"]
    set_here = {
        name for name in [*environment, *_dockerfile_env()] if name.startswith("COORDINATOR_")
    }
    assert set_here
    assert set_here <= known, set_here - known


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def ready_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_health_check_asks_readyz_on_coordinator_port(ready_server: int) -> None:
    image_check = _healthcheck_command()
    # compose.yaml repeats it for podman's OCI images, which drop the image's.
    assert _compose()["services"]["api"]["healthcheck"]["test"] == ["CMD", *image_check]
    program, *args = image_check
    assert program == "python"

    def check(port: str) -> int:
        env = {"COORDINATOR_PORT": port}
        return subprocess.run([sys.executable, *args], env=env, check=False).returncode

    assert check(str(ready_server)) == 0
    # A port bound but not listening refuses the connection: the check fails there.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        assert check(str(closed.getsockname()[1])) != 0
