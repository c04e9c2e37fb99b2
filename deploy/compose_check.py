"""`make compose-check`: bring compose.yaml up on Docker Compose v2 or podman-compose and check
what it promises, then take it down.

Checked: every container running and healthy (Valkey, three API replicas, nginx); /readyz
through nginx; a register, grant and release through nginx; every replica answering some of
the requests nginx spread; the process and its completed key still there after `down` and
`up` (state lives in the Valkey volume); and the built image, run on its own with only
COORDINATOR_HOST and COORDINATOR_PORT set, listening on that port and healthy by its own
HEALTHCHECK. Any failure ends it with one line on stderr and exit status 1.

The engine is `docker compose` when it answers, else podman-compose; COMPOSE_CHECK_ENGINE
(docker or podman) forces one. The stack runs as its own project, so a stack of yours started
from the same file keeps its volume; it needs the same host port (8000) and subnet free.
Only the standard library: it runs before any project dependency is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
# Build output and every container's logs, for reading after a failure.
LOG_FILE = ROOT / "build" / "compose-check.log"
PROJECT = "bpc-compose-check"
# compose.yaml publishes nginx on this host address, on the port this variable names (8000
# when unset); tests/test_compose_file.py holds the two equal. Unless it is set already, the
# check picks a free port, so a server or stack of yours on 8000 is no obstacle.
NGINX_HOST = "127.0.0.1"
PORT_VARIABLE = "NGINX_PORT"
REPLICAS = 3
SERVICES = {"valkey": 1, "api": REPLICAS, "nginx": 1}
# An image build on a cold cache downloads every dependency: minutes, not seconds.
UP_TIMEOUT = 900.0
HEALTHY_TIMEOUT = 180.0
# Requests sent through nginx until every replica has answered some (each one reaches a given
# replica with probability 1/3: all three answer within 60 all but always).
SPREAD_BATCH = 60
# Restarts of one container that count as a crash loop rather than a start-up race.
CRASH_LOOP = 3
SPREAD_MAX = 600
# The port the lone image is told to listen on: anything but the default 8000.
OTHER_PORT = 8123
# Host proxies must not capture 127.0.0.1.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CheckFailed(Exception):
    """One thing the stack promises did not hold; the message is the line printed."""


@dataclass(frozen=True, slots=True)
class Engine:
    """How to drive one container engine: its compose command and its own CLI."""

    name: str
    compose: tuple[str, ...]
    cli: str

    @property
    def ticks_health(self) -> bool:
        """Whether health checks must be run by hand: podman schedules them with systemd
        timers, and without systemd they never run on their own."""
        return self.name == "podman"


@dataclass(frozen=True, slots=True)
class Container:
    """What `inspect` says of one of the project's containers."""

    id: str
    name: str
    service: str
    status: str
    health: str | None
    restarts: int
    image: str
    networks: tuple[str, ...]
    volumes: tuple[str, ...]

    @classmethod
    def from_inspect(cls, found: dict[str, Any]) -> Container:
        """Read the fields Docker and podman both give, under the same names."""
        state = found["State"]
        labels = found["Config"].get("Labels") or {}
        return cls(
            id=found["Id"],
            name=found["Name"].lstrip("/"),
            service=labels.get("com.docker.compose.service", ""),
            status=state["Status"],
            health=(state.get("Health") or {}).get("Status") or None,
            restarts=int(found.get("RestartCount") or 0),
            image=found["Image"],
            networks=tuple(found["NetworkSettings"]["Networks"]),
            volumes=tuple(
                mount["Name"] for mount in found.get("Mounts") or [] if mount.get("Name")
            ),
        )


def main() -> int:
    """Run every check; print one line per step, or one line saying what failed."""
    LOG_FILE.parent.mkdir(exist_ok=True)
    LOG_FILE.write_text("")
    try:
        engine = choose_engine()
    except CheckFailed as failure:
        print(f"compose-check: FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"compose-check: {' '.join(engine.compose)} ({version(engine)}), project {PROJECT}")
    volumes: set[str] = set()
    try:
        check(engine, volumes)
    except CheckFailed as failure:
        save_logs(engine)
        print(f"compose-check: FAILED: {failure} (logs: {LOG_FILE})", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - whatever else broke, still one line and down
        save_logs(engine)
        print(f"compose-check: FAILED: {error!r} (logs: {LOG_FILE})", file=sys.stderr)
        return 1
    finally:
        take_down(engine, volumes)
    print("compose-check: ok")
    return 0


def choose_engine() -> Engine:
    """COMPOSE_CHECK_ENGINE if set, else Docker when `docker compose` answers, else podman."""
    forced = os.environ.get("COMPOSE_CHECK_ENGINE", "").strip()
    if forced not in ("", "docker", "podman"):
        raise CheckFailed(f"COMPOSE_CHECK_ENGINE must be docker or podman, not {forced!r}")
    docker = Engine("docker", ("docker", "compose"), "docker")
    if forced == "docker" or (not forced and answers(docker.compose)):
        return docker
    # Beside this interpreter too: the Makefile installs podman-compose into the venv.
    beside = Path(sys.executable).parent / "podman-compose"
    podman_compose = shutil.which("podman-compose") or (str(beside) if beside.exists() else None)
    if podman_compose is not None and shutil.which("podman") is not None:
        return Engine("podman", (podman_compose,), "podman")
    if forced == "podman":
        raise CheckFailed("podman and podman-compose must both be installed")
    raise CheckFailed(
        "no engine: install Docker with the compose plugin, or podman and podman-compose"
    )


def answers(command: Sequence[str]) -> bool:
    """Whether `command version` runs and exits 0."""
    try:
        return run([*command, "version"], check=False).returncode == 0
    except FileNotFoundError:
        return False


def version(engine: Engine) -> str:
    """The compose command's own version line(s), joined."""
    lines = run([*engine.compose, "version"], check=False).stdout.strip().splitlines()
    return "; ".join(line.strip() for line in lines if line.strip())


def check(engine: Engine, volumes: set[str]) -> None:
    """Every step in order; each raises CheckFailed."""
    choose_port()
    compose(engine, "up", "-d", "--build")
    stack = wait_healthy(engine)
    volumes.update(v for c in stack for v in c.volumes)
    print(f"compose-check: up: {describe(stack)}")
    wait_ready()
    print(f"compose-check: GET {nginx_url()}/readyz through nginx: 200")
    process = f"compose-check-{uuid.uuid4().hex[:8]}"
    key = register_grant_release(process)
    print(f"compose-check: register, grant (key {key}), release through nginx: ok")
    served = spread(engine, [c for c in stack if c.service == "api"])
    print(f"compose-check: every replica served /healthz requests: {served}")
    compose(engine, "down")
    compose(engine, "up", "-d")
    stack = wait_healthy(engine)
    volumes.update(v for c in stack for v in c.volumes)
    wait_ready()
    kept_after_restart(process, key)
    print(f"compose-check: down + up: process {process} and its completed key {key} kept")
    api = next(c for c in stack if c.service == "api")
    lone_image(engine, api)
    print(
        f"compose-check: the image alone with COORDINATOR_PORT={OTHER_PORT}: listens there,"
        " healthy by its own HEALTHCHECK"
    )


def choose_port() -> None:
    """Set PORT_VARIABLE to a free port unless it is set; if it is, refuse at once when the
    port is taken (the engine would say so only after building, at more length)."""
    chosen = os.environ.get(PORT_VARIABLE, "").strip()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((NGINX_HOST, int(chosen) if chosen.isdigit() else 0))
        except OSError as error:
            raise CheckFailed(
                f"{NGINX_HOST}:{chosen} ({PORT_VARIABLE}) is taken ({error.strerror}):"
                f" stop what listens there, or leave {PORT_VARIABLE} unset"
            ) from None
        # compose reads it from the environment the check passes on, http() from here.
        os.environ[PORT_VARIABLE] = str(probe.getsockname()[1])


def nginx_url() -> str:
    """Where the check reaches nginx from this host."""
    return f"http://{NGINX_HOST}:{os.environ[PORT_VARIABLE]}"


def compose(engine: Engine, *args: str) -> None:
    """Run one compose command on the project, its output to the log file."""
    command = [*engine.compose, "-f", str(COMPOSE_FILE), "-p", PROJECT, *args]
    # podman builds OCI images unless told otherwise, and OCI images have no HEALTHCHECK:
    # the lone-image step needs the Dockerfile's.
    env = {**os.environ, "BUILDAH_FORMAT": "docker"}
    done = run(command, check=False, env=env, timeout=UP_TIMEOUT)
    if done.returncode != 0:
        # The engine's own reason, when it gave one, rather than the whole build log: its
        # last error line, passing over podman's complaint that there is no systemd to time
        # health checks with (printed on every start here, and not a failure).
        lines = [line.strip() for line in done.stdout.splitlines()]
        errors = [line for line in lines if "error" in line.lower() and "systemd" not in line]
        reason = errors[-1] if errors else ""
        raise CheckFailed(
            f"`compose {' '.join(args)}` exited {done.returncode}"
            + (f": {reason}" if reason else "")
        )


def containers(engine: Engine, *filters: str) -> list[Container]:
    """The containers `ps -a` lists with these filters, as `inspect` describes them."""
    found = run([engine.cli, "ps", "-aq", *(f"--filter={f}" for f in filters)]).stdout.split()
    if not found:
        return []
    return [
        Container.from_inspect(c) for c in json.loads(run([engine.cli, "inspect", *found]).stdout)
    ]


def wait_healthy(engine: Engine) -> list[Container]:
    """Poll until every service has its containers running (and healthy where checked)."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    while True:
        stack = containers(engine, f"label=com.docker.compose.project={PROJECT}")
        counts = {s: sum(c.service == s for c in stack) for s in SERVICES}
        # `up -d` has returned, so every container it will make exists already.
        if counts != SERVICES:
            raise CheckFailed(f"compose made containers {counts}, not {SERVICES}")
        # A replica may exit once or twice and be restarted (podman-compose before podman 4.6
        # starts it before Valkey is healthy); more is a crash loop.
        looping = [c for c in stack if c.restarts >= CRASH_LOOP]
        if looping:
            raise CheckFailed(
                f"container {looping[0].name} restarted {looping[0].restarts} times:"
                f" {last_log_line(engine, looping[0].name)}"
            )
        waiting = [c for c in stack if c.status != "running" or c.health not in (None, "healthy")]
        if not waiting:
            return stack
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"not healthy after {HEALTHY_TIMEOUT:.0f} s: "
                + ", ".join(
                    f"{c.name} {c.health or c.status} ({last_log_line(engine, c.name)})"
                    for c in waiting
                )
            )
        if engine.ticks_health:
            for c in stack:
                if c.status == "running" and c.health not in (None, "healthy"):
                    tick_health(engine, c.name)
        time.sleep(2)


def last_log_line(engine: Engine, container: str) -> str:
    """The last line a container wrote, to name why it stopped."""
    lines = run([engine.cli, "logs", "--tail", "5", container], check=False).stdout.splitlines()
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


def tick_health(engine: Engine, container: str) -> None:
    """Run a container's health check once (podman records the result as a timer would)."""
    run([engine.cli, "healthcheck", "run", container], check=False)


def wait_ready() -> None:
    """/readyz through nginx answers 200 (nginx may come up just before the replicas)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _ = http("GET", "/readyz")
        except CheckFailed:
            status = 0
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"GET /readyz through nginx answered {status or 'nothing'}")
        time.sleep(1)


def register_grant_release(process: str) -> int:
    """The core cycle through nginx; returns the key granted and completed."""
    answer = expect("POST", "/api/v1/process", {"process_name": process, "key_set_size": 2})
    if answer.get("process_name") != process:
        raise CheckFailed(f"register answered {answer}")
    lease = expect(
        "POST", "/api/v1/process/batch_keys", {"process_name": process, "machine": "compose-check"}
    )
    key, lease_id = lease.get("key"), lease.get("external_id")
    if key not in (0, 1) or not isinstance(lease_id, str):
        raise CheckFailed(f"grant answered {lease}")
    released = expect("DELETE", f"/api/v1/process/batch_keys/{lease_id}?outcome=completed")
    if released.get("last_completed_at") is None:
        raise CheckFailed(f"release answered {released}")
    assert isinstance(key, int)
    return key


def spread(engine: Engine, replicas: list[Container]) -> str:
    """Send GET /healthz through nginx until every replica's own counter of them has grown;
    returns how many each answered, as "name=count, ...". A replica's /metrics, read inside
    its container with `exec`, counts only what that replica answered."""
    before = {c.name: healthz_count(engine, c.name) for c in replicas}
    sent = 0
    while True:
        for _ in range(SPREAD_BATCH):
            expect("GET", "/healthz")
        sent += SPREAD_BATCH
        served = {c.name: healthz_count(engine, c.name) - before[c.name] for c in replicas}
        if all(n > 0 for n in served.values()):
            return ", ".join(f"{name} {n}" for name, n in served.items()) + f" of {sent}"
        if sent >= SPREAD_MAX:
            raise CheckFailed(f"after {sent} requests through nginx, replicas served {served}")


def healthz_count(engine: Engine, container: str) -> int:
    """GET /healthz answered by this replica, from its own /metrics."""
    fetch = (
        "import urllib.request as u; print(u.build_opener(u.ProxyHandler({}))"
        ".open('http://127.0.0.1:8000/metrics', timeout=5).read().decode())"
    )
    metrics = run([engine.cli, "exec", container, "python", "-c", fetch]).stdout
    prefix = 'coordinator_http_requests_total{method="GET",route="/healthz",'
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith(prefix)
    )


def kept_after_restart(process: str, key: int) -> None:
    """The process and its completed key, read back through nginx after down and up."""
    expect("GET", f"/api/v1/process/{process}")
    keys = expect("GET", f"/api/v1/process/batch_keys/{process}")
    rows = keys if isinstance(keys, list) else []
    done = [row for row in rows if row.get("key") == key and row.get("last_completed_at")]
    if not done:
        raise CheckFailed(f"after down and up, key {key} of {process} is no longer completed")


def lone_image(engine: Engine, api: Container) -> None:
    """Run the built image with its own command and health check, told only
    COORDINATOR_PORT (and a loopback COORDINATOR_HOST, which needs no tokens): healthy means
    both the command and the HEALTHCHECK used that port."""
    name = f"{PROJECT}-lone-image"
    run([engine.cli, "rm", "-f", name], check=False)
    run(
        [
            engine.cli,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            api.networks[0],
            "-e",
            "COORDINATOR_REDIS_URL=redis://valkey:6379/0",
            "-e",
            "COORDINATOR_HOST=127.0.0.1",
            "-e",
            f"COORDINATOR_PORT={OTHER_PORT}",
            api.image,
        ]
    )
    try:
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while True:
            (lone,) = containers(engine, f"name=^{name}$")
            if lone.health is None:
                raise CheckFailed("the built image has no HEALTHCHECK")
            if lone.health == "healthy":
                break
            if lone.status != "running":
                raise CheckFailed(f"the image alone with COORDINATOR_PORT={OTHER_PORT} stopped")
            if time.monotonic() > deadline:
                raise CheckFailed(
                    f"the image alone with COORDINATOR_PORT={OTHER_PORT} is {lone.health}"
                    f" after {HEALTHY_TIMEOUT:.0f} s"
                )
            if engine.ticks_health:
                tick_health(engine, name)
            time.sleep(2)
        # Healthy could not tell a check that ignores the port from one that follows it if
        # the API also answered on 8000: it must not.
        probe = (
            "import urllib.request as u; u.build_opener(u.ProxyHandler({}))"
            ".open('http://127.0.0.1:8000/healthz', timeout=2)"
        )
        if run([engine.cli, "exec", name, "python", "-c", probe], check=False).returncode == 0:
            raise CheckFailed(f"the image told COORDINATOR_PORT={OTHER_PORT} answers on 8000")
    finally:
        with LOG_FILE.open("a") as log:
            log.write(f"\n==== {name}\n")
            log.write(run([engine.cli, "logs", name], check=False).stdout)
        run([engine.cli, "rm", "-f", "-v", name], check=False)


def expect(method: str, path: str, body: dict[str, Any] | None = None) -> Any:  # noqa: ANN401
    """One request through nginx that must answer 2xx; returns its JSON body."""
    status, answer = http(method, path, body)
    if not 200 <= status < 300:
        raise CheckFailed(f"{method} {path} through nginx answered {status}: {answer}")
    return answer


def http(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """Status and JSON body (None if not JSON) of one request through nginx."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{nginx_url()}{path}", data=data, method=method)  # noqa: S310
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _HTTP.open(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except OSError as error:
        raise CheckFailed(f"{method} {path} through nginx: {error}") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def describe(stack: list[Container]) -> str:
    """One line for the stack, e.g. "valkey healthy, api x3 healthy, nginx running"."""
    parts = []
    for service, want in SERVICES.items():
        states = sorted({c.health or c.status for c in stack if c.service == service})
        parts.append(f"{service}{f' x{want}' if want > 1 else ''} {'/'.join(states)}")
    return ", ".join(parts)


def save_logs(engine: Engine) -> None:
    """Every container's logs into the log file, after the compose output already there."""
    with LOG_FILE.open("a") as log:
        for c in containers(engine, f"label=com.docker.compose.project={PROJECT}"):
            log.write(f"\n==== {c.name} ({c.status}, {c.health})\n")
            log.write(run([engine.cli, "logs", c.name], check=False).stdout)


def take_down(engine: Engine, volumes: set[str]) -> None:
    """`down -v`, then any volume a container used that it left (podman-compose keeps the
    anonymous ones): those of the containers there now, whatever step failed, and those
    of the containers an earlier `down` removed."""
    try:
        there = containers(engine, f"label=com.docker.compose.project={PROJECT}")
    except CheckFailed:  # the engine itself failing: `down` below is still worth trying
        there = []
    volumes = volumes | {v for c in there for v in c.volumes}
    run([*engine.compose, "-f", str(COMPOSE_FILE), "-p", PROJECT, "down", "-v"], check=False)
    for volume in sorted(volumes):
        run([engine.cli, "volume", "rm", volume], check=False)


def run(
    command: Sequence[str],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run one command, stdout and stderr together, appended to the log file; with `check`,
    a non-zero exit is a CheckFailed naming the command."""
    with LOG_FILE.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
    try:
        done = subprocess.run(  # noqa: S603
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"`{' '.join(command)}` took over {timeout:.0f} s") from None
    with LOG_FILE.open("a") as log:
        log.write(done.stdout)
    if check and done.returncode != 0:
        last = (done.stdout.strip().splitlines() or [""])[-1]
        raise CheckFailed(f"`{' '.join(command)}` exited {done.returncode}: {last}")
    return done


if __name__ == "__main__":
    sys.exit(main())
