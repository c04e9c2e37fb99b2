"""Whose fault is an HTTP ratio under target: the machine, the load generator or the code?

Three comparisons on the HTTP cycle of bench/run.py (wrk, 64 connections, 1 worker each side):

1. the ceiling app alone (ours not running) vs beside ours (ours started and idle, as the
   HTTP figure runs it): what ours costs the machine while it waits;
2. ours vs the ceiling, unpinned, as the HTTP figure runs them;
3. the same with each server on a core of its own (taskset) and Valkey and wrk on the other:
   where a server no longer shares its core with Valkey and wrk, what is left of the gap is the
   code's.

Steal time (/proc/stat) over every window says whether the hypervisor took cores away.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from bench import http_load
from bench.cpu import CpuWindow
from coordinator.embedded import EmbeddedValkey, free_port

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 64


def steal_seconds() -> float:
    """CPU seconds the hypervisor took from this machine since boot (all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def _server(
    kind: str, valkey: EmbeddedValkey, work: Path, name: str, core: str | None
) -> http_load.Server:
    port = free_port()
    python = str(ROOT / ".venv/bin/python")
    module = ["coordinator.cli", "serve"] if kind == "ours" else ["bench.ceiling_app"]
    command = [python, "-m", *module, "--port", str(port), "--workers", "1"]
    if kind != "ours":
        command += ["--log-level", "warning"]
    if core is not None:
        command = ["taskset", "-c", core, *command]
    env = {**os.environ, "COORDINATOR_REDIS_URL": valkey.url}
    return http_load.Server(command, env, port, work / f"{name}.log")


def _pin(pid: int, cores: str) -> None:
    """Every thread of `pid` onto `cores`."""
    subprocess.run(["taskset", "-a", "-p", "-c", cores, str(pid)], check=True, capture_output=True)  # noqa: S603, S607


class _Rounds:
    """Load windows, each with its cycles/s, CPU per side and steal."""

    def __init__(self, valkey: EmbeddedValkey, valkey_pid: int, seconds: float, work: Path) -> None:
        self.valkey, self.valkey_pid, self.seconds, self.work = valkey, valkey_pid, seconds, work
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self._n = 0

    def run(self, label: str, server: http_load.Server, pin: str | None, *, keep: bool) -> None:
        """One window of `server` under wrk (pinned to `pin`); kept under `label` unless a
        warm-up (labels of ours start with "ours")."""
        self._n += 1
        process = f"pinned-{self._n}"
        if label.startswith("ours"):  # the bare app reads no process
            http_load.register(server.url, process, 2 * CONNECTIONS)
        steal0 = steal_seconds()
        window = CpuWindow({"server": server.pid, "valkey": self.valkey_pid}).start()
        result = http_load.run_load(
            server.url,
            process,
            CONNECTIONS,
            self.seconds,
            self.work / f"{process}.txt",
            use_wrk=http_load.wrk_binary() is not None,
            pin=pin,
        )
        window.stop({"load generator": result.cpu_seconds})
        if keep:
            self.runs.setdefault(label, []).append(
                {
                    "cycles_per_second": result.cycles / result.duration_s,
                    "non_2xx": result.non_2xx,
                    "steal_seconds": round(steal_seconds() - steal0, 3),
                    "cpu": window.to_json(),
                }
            )

    def summary(self) -> dict[str, Any]:
        """Per label: the mean cycles/s, each round's, server cores, steal."""
        out: dict[str, Any] = {}
        for label, runs in self.runs.items():
            rates = [r["cycles_per_second"] for r in runs]
            out[label] = {
                "cycles_per_second": sum(rates) / len(rates),
                "per_round_cycles_per_second": [round(x) for x in rates],
                "server_cores": [r["cpu"]["cores"]["server"] for r in runs],
                # The code's own cost, whatever the scheduler did to the window.
                "cycles_per_server_cpu_second": sum(
                    r["cycles_per_second"] / max(r["cpu"]["cores"]["server"], 0.01) for r in runs
                )
                / len(runs),
                "valkey_cores": [r["cpu"]["cores"]["valkey"] for r in runs],
                "other_processes_cores": [r["cpu"]["other_processes_cores"] for r in runs],
                "steal_seconds": sum(r["steal_seconds"] for r in runs),
                "non_2xx": sum(r["non_2xx"] for r in runs),
            }
        return out


def pinned_figure(
    valkey: EmbeddedValkey, valkey_pid: int, *, rounds: int, seconds: float, work: Path
) -> dict[str, Any]:
    """The three comparisons of the module's docstring."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return {"skipped": "one core: nothing to pin apart"}
    rest = f"1-{cores - 1}"  # core 0 is the server's
    w = _Rounds(valkey, valkey_pid, seconds, work)
    with _server("ceiling", valkey, work, "alone", None) as ceiling:
        w.run("ceiling_alone", ceiling, None, keep=False)
        for _ in range(rounds):
            w.run("ceiling_alone", ceiling, None, keep=True)
        with _server("ours", valkey, work, "beside", None) as ours:
            w.run("ours_unpinned", ours, None, keep=False)
            for _ in range(rounds):
                w.run("ceiling_beside_ours", ceiling, None, keep=True)
                w.run("ours_unpinned", ours, None, keep=True)
    _pin(valkey_pid, rest)
    try:
        with (
            _server("ours", valkey, work, "ours-pinned", "0") as ours,
            _server("ceiling", valkey, work, "ceiling-pinned", "0") as ceiling,
        ):
            for keep in (False, *([True] * rounds)):
                w.run("ours_pinned", ours, rest, keep=keep)
                w.run("ceiling_pinned", ceiling, rest, keep=keep)
    finally:
        _pin(valkey_pid, f"0-{cores - 1}")
    out = w.summary()
    out["ratio_unpinned"] = (
        out["ours_unpinned"]["cycles_per_second"] / out["ceiling_beside_ours"]["cycles_per_second"]
    )
    out["ratio_pinned"] = (
        out["ours_pinned"]["cycles_per_second"] / out["ceiling_pinned"]["cycles_per_second"]
    )
    out["ceiling_beside_over_alone"] = (
        out["ceiling_beside_ours"]["cycles_per_second"] / out["ceiling_alone"]["cycles_per_second"]
    )
    out["ratio_per_server_cpu_second"] = (
        out["ours_pinned"]["cycles_per_server_cpu_second"]
        / out["ceiling_pinned"]["cycles_per_server_cpu_second"]
    )
    out["server_core"], out["valkey_and_wrk_cores"] = "0", rest
    return out
