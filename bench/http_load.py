"""HTTP load: grant -> release cycles on N keep-alive connections, by wrk or by Python.

wrk (bench/wrk_cycle.lua) is the generator; where wrk is missing, the fallback is this
module run as its own process, an asyncio client on raw sockets (no HTTP library), so its CPU
is measured apart from the servers'. Both write the same `name value` lines:

    .venv/bin/python -m bench.http_load --url http://127.0.0.1:8000 --process p \\
        --connections 64 --duration 10 --out /tmp/out.txt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_cycle.lua"
GRANT_PATH = "/api/v1/process/batch_keys"


@dataclass
class LoadResult:
    """What one load run counted."""

    generator: str
    duration_s: float
    cycles: int
    grants: int
    grant_non_2xx: int
    release_non_2xx: int
    socket_errors: int
    grant_latencies_us: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0

    @property
    def non_2xx(self) -> int:
        """Every answer that was not a success."""
        return self.grant_non_2xx + self.release_non_2xx


def _parse(text: str, generator: str, cpu_seconds: float) -> LoadResult:
    counts: dict[str, float] = {}
    latencies: list[float] = []
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "grant_us":
            latencies.append(float(value))
        elif name:
            counts[name] = float(value)
    socket_errors = sum(
        int(counts.get(f"errors_{kind}", 0)) for kind in ("connect", "read", "write", "timeout")
    )
    return LoadResult(
        generator=generator,
        duration_s=counts["duration_us"] / 1e6,
        cycles=int(counts["cycles"]),
        grants=int(counts["grants"]),
        grant_non_2xx=int(counts["grant_bad"]),
        release_non_2xx=int(counts["release_bad"]),
        socket_errors=socket_errors,
        grant_latencies_us=latencies,
        cpu_seconds=cpu_seconds,
    )


def register(url: str, name: str, keys: int) -> None:
    """Register process `name` of `keys` keys on the server at `url`."""
    body = json.dumps({"process_name": name, "key_set_size": keys}).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback URL we built
        f"{url}/api/v1/process", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        assert answer.status == 201


def wrk_binary() -> str | None:
    """wrk on PATH, if installed."""
    return shutil.which("wrk")


def run_load(
    url: str,
    process: str,
    connections: int,
    duration: float,
    out: Path,
    *,
    use_wrk: bool,
    pin: str | None = None,
) -> LoadResult:
    """One run of `connections` cycling connections for `duration` seconds; CPU from rusage.

    `pin` (a CPU list, as taskset takes it) keeps the generator on those cores."""
    env = {**os.environ, "BENCH_PROCESS": process, "BENCH_OUT": str(out)}
    if use_wrk:
        wrk = wrk_binary()
        assert wrk is not None
        # One thread per connection: wrk's Lua state is per thread.
        command = [
            wrk,
            f"-t{connections}",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--timeout",
            "10s",
            "-s",
            str(WRK_SCRIPT),
            url,
        ]
        generator = "wrk"
    else:
        command = [
            str(ROOT / ".venv/bin/python"),
            "-m",
            "bench.http_load",
            "--url",
            url,
            "--process",
            process,
            "--connections",
            str(connections),
            "--duration",
            f"{duration:g}",
            "--out",
            str(out),
        ]
        generator = "python-raw-socket"
    if pin is not None and shutil.which("taskset"):
        command = ["taskset", "-c", pin, *command]
    log = out.with_suffix(".log").open("wb")
    with log:
        child = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)  # noqa: S603
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{generator} exited {child.returncode}; see {out.with_suffix('.log')}")
    return _parse(out.read_text(), generator, usage.ru_utime + usage.ru_stime)


class Server:
    """A server subprocess in its own session, stopped by SIGTERM to its pid."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.command = command
        self.env = env
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The top process (uvicorn's supervisor with --workers 2)."""
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> Server:
        """Start and return once it answers HTTP."""
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                self.command,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command[0]} exited; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2):  # noqa: S310
                    return self
            except urllib.error.HTTPError:
                return self  # it answers, if only 404
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.command} did not answer; see {self.log}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the top process and wait (uvicorn stops its workers itself)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# The fallback generator ------------------------------------------------------------------

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
_EXTERNAL_ID = re.compile(rb'"external_id":"([^"]+)"')


async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = _CONTENT_LENGTH.search(head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    return int(head[9:12]), body


def grant_request(host: str, process: str, machine: str) -> bytes:
    """The bytes of one grant request (POST .../batch_keys) on a keep-alive connection."""
    body = b'{"process_name":"%s","machine":"%s"}' % (process.encode(), machine.encode())
    return (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    ) % (GRANT_PATH.encode(), host.encode(), len(body), body)


async def release(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, granted: bytes
) -> str:
    """Release the lease whose grant answered `granted`: "released", "release_bad" (not 200),
    or "unparsed" (no external_id in the grant's body, nothing sent)."""
    found = _EXTERNAL_ID.search(granted)
    if found is None:
        return "unparsed"
    path = b"%s/%s" % (GRANT_PATH.encode(), found.group(1))
    writer.write(b"DELETE %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host.encode()))
    status, _ = await response(reader)
    return "released" if status == 200 else "release_bad"


async def _connection(
    *,
    host: str,
    port: int,
    process: str,
    deadline: float,
    counts: dict[str, int],
    latencies: list[float],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    grant = grant_request(host, process, "python")
    try:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            writer.write(grant)
            status, answer = await response(reader)
            if status != 201:
                counts["grant_bad"] += 1
                continue
            latencies.append((time.perf_counter() - sent) * 1e6)
            counts["grants"] += 1
            outcome = await release(reader, writer, host, answer)
            counts["cycles" if outcome == "released" else outcome] += 1
    finally:
        writer.close()


async def _generate(url: str, process: str, connections: int, duration: float) -> str:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counts = dict.fromkeys(("cycles", "grants", "grant_bad", "release_bad", "unparsed"), 0)
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + duration
    results = await asyncio.gather(
        *(
            _connection(
                host=host,
                port=port,
                process=process,
                deadline=deadline,
                counts=counts,
                latencies=latencies,
            )
            for _ in range(connections)
        ),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - started
    errors = sum(1 for r in results if isinstance(r, BaseException))
    lines = [f"{name} {value}" for name, value in counts.items()]
    lines += [f"duration_us {elapsed * 1e6:.0f}", f"errors_read {errors}"]
    lines += [f"grant_us {x:.1f}" for x in latencies]
    return "\n".join(lines) + "\n"


def main() -> None:
    """The fallback generator's command line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--process", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = asyncio.run(_generate(args.url, args.process, args.connections, args.duration))
    args.out.write_text(report)


if __name__ == "__main__":
    main()
