"""The coordinator's benchmark: every figure side by side with its ceiling, in one run.

    make bench                     # or: .venv/bin/python -m bench.run [--workers 1|2] [--quick]

One private Valkey (coordinator.embedded.EmbeddedValkey in a temporary directory, loopback
only) serves every measurement. Prints a table and writes bench/results.json.

1. HTTP: grant + release cycles/s of `coordinator serve` (at its defaults: request lines and
   metrics on) under wrk (64 threads x 1 connection each), vs a bare Starlette app on the same
   uvicorn stack doing one PING per request (bench/ceiling_app.py); non-2xx answers (must be
   0). Then grant latency offered open loop at half that rate (bench/open_loop.py), and
   `--workers 2` against 1 with wrk pinned to a core of its own; and whose fault a gap is:
   the ceiling alone vs beside ours, both with each server on a core of its own
   (bench/pinned.py).
2. Direct: AsyncRedisCoordinator acquire + release with 64 tasks, vs two PINGs per cycle.
3. Keys 0-47 of 64 held all along: ours vs one redis-py Lock per key tried in turn.
4. Size: mean acquire + release latency at 1,000,000 keys vs 10 keys, and used_memory per
   key after each of the million keys was granted and completed once.
5. Batch-run options: Valkey's time in the scripts (and its process CPU) per grant + release
   with every option on, vs a process with none (bench/script_cost.py); and our scripts beside
   a hand-written floor (bench/script_floor.py, bench/floor/).
6. Scale: `/metrics`, one process page and the dashboard's first render at 1,000 / 10,000 /
   100,000 registered processes; other clients' renewals during a scrape and during a whole
   listing of a million keys; memory per idle process (bench/scale_figure.py).
7. What users build instead: the same cycle on a PostgreSQL table of keys with `FOR UPDATE
   SKIP LOCKED`, cycles/s and server CPU per cycle beside ours (bench/postgres.py).

CPU: each side's utime + stime over each window (servers with their workers, Valkey, the load
generator), and what other processes on the machine took meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

from bench import direct, http_load, postgres, report_cost, script_cost, script_floor, size
from bench.cpu import CpuWindow, machine_busy_seconds
from bench.pinned import pinned_figure
from bench.report import FIGURES, TARGETS, markdown, render, update_readme, verdict
from bench.scale_figure import scale_figure
from coordinator.embedded import EmbeddedValkey, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.json"
README = ROOT / "README.md"


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of one run."""

    workers: int
    http_rounds: int
    http_seconds: float
    http_warmup: float
    connections: int
    direct_rounds: int
    direct_seconds: float
    direct_warmup: float
    held_seconds: float
    held_rounds: int
    size_keys: int
    latency_cycles: int
    latency_rounds: int
    options_rounds: int
    options_seconds: float
    latency_seconds: float
    workers_rounds: int
    floor_rounds: int
    floor_seconds: float
    scale_sizes: tuple[int, ...]
    scale_repeats: int
    listing_keys: int
    listing_repeats: int
    postgres_rounds: int
    postgres_seconds: float
    pinned_rounds: int
    pinned_seconds: float


FULL = Plan(
    workers=1,
    http_rounds=6,
    http_seconds=5,
    http_warmup=3,
    connections=64,
    direct_rounds=6,
    direct_seconds=3,
    direct_warmup=1,
    held_seconds=3,
    held_rounds=4,
    size_keys=1_000_000,
    latency_cycles=3000,
    latency_rounds=3,
    options_rounds=4,
    options_seconds=3,
    latency_seconds=10,
    workers_rounds=3,
    floor_rounds=4,
    floor_seconds=3,
    scale_sizes=(1_000, 10_000, 100_000),
    scale_repeats=3,
    listing_keys=1_000_000,
    listing_repeats=2,
    postgres_rounds=3,
    postgres_seconds=3,
    pinned_rounds=3,
    pinned_seconds=5,
)
QUICK = Plan(
    workers=1,
    http_rounds=1,
    http_seconds=4,
    http_warmup=1,
    connections=64,
    direct_rounds=1,
    direct_seconds=2,
    direct_warmup=0.5,
    held_seconds=2,
    held_rounds=1,
    size_keys=50_000,
    latency_cycles=500,
    latency_rounds=1,
    options_rounds=1,
    options_seconds=2,
    latency_seconds=3,
    workers_rounds=1,
    floor_rounds=1,
    floor_seconds=1,
    scale_sizes=(200, 2_000),
    scale_repeats=1,
    listing_keys=20_000,
    listing_repeats=1,
    postgres_rounds=1,
    postgres_seconds=2,
    pinned_rounds=1,
    pinned_seconds=2,
)


def log(message: str) -> None:
    """Progress on stderr, so stdout is the table alone."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)]


# 1. HTTP -------------------------------------------------------------------------------


def _register(url: str, name: str, keys: int) -> None:
    http_load.register(url, name, keys)


def http_figure(valkey: EmbeddedValkey, valkey_pid: int, plan: Plan, work: Path) -> dict[str, Any]:
    """Ours vs the bare app, same uvicorn flags, interleaved rounds."""
    use_wrk = http_load.wrk_binary() is not None
    if not use_wrk:
        log(
            "wrk not found (`apt-get install wrk` as root, or `make bench` does it): falling"
            " back to the Python raw-socket generator, which may be the bottleneck; its CPU"
            " is reported"
        )
    env = {**os.environ, "COORDINATOR_REDIS_URL": valkey.url}
    # Ours at its defaults: a JSON line per request (to its log file) and metrics counted.
    flags = ["--workers", str(plan.workers)]
    python = str(ROOT / ".venv/bin/python")
    ours_port, ceiling_port = free_port(), free_port()
    ours = http_load.Server(
        [python, "-m", "coordinator.cli", "serve", "--port", str(ours_port), *flags],
        env,
        ours_port,
        work / "serve.log",
    )
    ceiling = http_load.Server(
        [
            python,
            "-m",
            "bench.ceiling_app",
            "--port",
            str(ceiling_port),
            *flags,
            "--log-level",
            "warning",
        ],
        env,
        ceiling_port,
        work / "ceiling.log",
    )
    sides: dict[str, dict[str, Any]] = {"ours": {"runs": []}, "ceiling": {"runs": []}}
    stats = redis.Redis(port=valkey.port, decode_responses=True)
    with ours, ceiling:
        servers = {"ours": ours, "ceiling": ceiling}
        for round_ in range(-1, plan.http_rounds):  # round -1 is the warm-up
            for label, server in servers.items():
                process = f"http-{label}-{round_ + 1}"
                _register(ours.url, process, 2 * plan.connections)
                seconds = plan.http_warmup if round_ < 0 else plan.http_seconds
                calls = _command_calls(stats)
                window = CpuWindow({"server": server.pid, "valkey": valkey_pid}).start()
                result = http_load.run_load(
                    server.url,
                    process,
                    plan.connections,
                    seconds,
                    work / f"{process}.txt",
                    use_wrk=use_wrk,
                )
                window.stop({"load generator": result.cpu_seconds})
                commands = _delta(calls, _command_calls(stats))
                if round_ >= 0:
                    sides[label]["runs"].append((result, window, commands))
                log(
                    f"HTTP {label} round {round_ + 1}: {result.cycles / result.duration_s:,.0f}"
                    f" cycles/s, non-2xx {result.non_2xx}, socket errors"
                    f" {result.socket_errors}"
                )
    out: dict[str, Any] = {
        "generator": "wrk" if use_wrk else "python-raw-socket",
        "workers": plan.workers,
        "connections": plan.connections,
    }
    for label, side in sides.items():
        results = [r for r, _, _ in side["runs"]]
        windows = [w for _, w, _ in side["runs"]]
        commands: dict[str, int] = {}
        for _, _, run_commands in side["runs"]:
            for name, n in run_commands.items():
                commands[name] = commands.get(name, 0) + n
        latencies = [x for r in results for x in r.grant_latencies_us]
        cycles = sum(r.cycles for r in results)
        seconds = sum(r.duration_s for r in results)
        out[label] = {
            "cycles_per_second": cycles / seconds,
            "per_round_cycles_per_second": [r.cycles / r.duration_s for r in results],
            "cycles": cycles,
            "seconds": seconds,
            "grant_p50_ms": percentile(latencies, 50) / 1000,
            "grant_p99_ms": percentile(latencies, 99) / 1000,
            "grant_non_2xx": sum(r.grant_non_2xx for r in results),
            "release_non_2xx": sum(r.release_non_2xx for r in results),
            "socket_errors": sum(r.socket_errors for r in results),
            "redis_commands_per_cycle": {n: round(c / cycles, 2) for n, c in commands.items()},
            "cpu": CpuWindow.merge(windows),
            "cycles_per_server_cpu_second": cycles / sum(w.used["server"] for w in windows),
        }
    stats.close()
    out["ratio"] = out["ours"]["cycles_per_second"] / out["ceiling"]["cycles_per_second"]
    out["ratio_per_server_cpu_second"] = (
        out["ours"]["cycles_per_server_cpu_second"] / out["ceiling"]["cycles_per_server_cpu_second"]
    )
    out["non_2xx"] = out["ours"]["grant_non_2xx"] + out["ours"]["release_non_2xx"]
    return out


def _command_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        name: n - before.get(name, 0)
        for name, n in after.items()
        if name != "info" and n > before.get(name, 0)
    }


# 1b. Latency at half the saturating rate, open loop ---------------------------------------


def _serve(valkey: EmbeddedValkey, workers: int, work: Path, name: str) -> http_load.Server:
    port = free_port()
    command = [str(ROOT / ".venv/bin/python"), "-m", "coordinator.cli", "serve", "--port",
               str(port), "--workers", str(workers)]  # fmt: skip
    env = {**os.environ, "COORDINATOR_REDIS_URL": valkey.url}
    return http_load.Server(command, env, port, work / f"{name}.log")


def latency_figure(
    valkey: EmbeddedValkey, valkey_pid: int, saturating: float, plan: Plan, work: Path
) -> dict[str, Any]:
    """Grants offered at a constant rate (bench/open_loop.py): at half of `saturating`
    cycles/s on 16 connections, and at 200/s from one connection in sequence."""
    out: dict[str, Any] = {"saturating_cycles_per_second": saturating}
    with _serve(valkey, 1, work, "latency") as server:
        for label, rate, connections in (
            ("half", saturating / 2, 16),
            ("sequential", 200.0, 1),
        ):
            process = f"latency-{label}"
            _register(server.url, process, 128)
            report = work / f"{process}.json"
            window = CpuWindow({"server": server.pid, "valkey": valkey_pid}).start()
            command = [str(ROOT / ".venv/bin/python"), "-m", "bench.open_loop", "--url",
                       server.url, "--process", process, "--rate", f"{rate:.0f}",
                       "--duration", f"{plan.latency_seconds:g}", "--connections",
                       str(connections), "--out", str(report)]  # fmt: skip
            child = subprocess.Popen(command, cwd=ROOT)  # noqa: S603 - our own command line
            _, status, usage = os.wait4(child.pid, 0)
            window.stop({"load generator": usage.ru_utime + usage.ru_stime})
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"bench.open_loop failed: {command}")
            out[label] = {**json.loads(report.read_text()), "cpu": window.to_json()}
            log(
                f"latency {label}: {rate:,.0f} grants/s offered, p50"
                f" {out[label]['p50_ms']:.2f} ms, p99 {out[label]['p99_ms']:.2f} ms,"
                f" p99.9 {out[label]['p999_ms']:.2f} ms"
            )
    return out


# 1c. One worker process or two, the load generator pinned to a core of its own ---------------


def workers_figure(
    valkey: EmbeddedValkey, valkey_pid: int, plan: Plan, work: Path
) -> dict[str, Any]:
    """`serve --workers 1` vs `--workers 2`, wrk on the last core (taskset), rounds alternating."""
    cores = os.cpu_count() or 1
    pin = str(cores - 1) if cores > 1 else None
    runs: dict[int, list[tuple[http_load.LoadResult, CpuWindow]]] = {1: [], 2: []}
    servers = {n: _serve(valkey, n, work, f"workers-{n}") for n in (1, 2)}
    with servers[1], servers[2]:
        for round_ in range(-1, plan.workers_rounds):
            for workers, server in servers.items():
                process = f"workers-{workers}-{round_ + 1}"
                _register(server.url, process, 2 * plan.connections)
                window = CpuWindow({"server": server.pid, "valkey": valkey_pid}).start()
                result = http_load.run_load(
                    server.url,
                    process,
                    plan.connections,
                    plan.http_warmup if round_ < 0 else plan.http_seconds,
                    work / f"{process}.txt",
                    use_wrk=http_load.wrk_binary() is not None,
                    pin=pin,
                )
                window.stop({"load generator": result.cpu_seconds})
                if round_ >= 0:
                    runs[workers].append((result, window))
                rate = result.cycles / result.duration_s
                log(f"workers {workers} round {round_ + 1}: {rate:,.0f} cycles/s")
    out: dict[str, Any] = {"load_generator_core": pin, "cores": cores}
    for workers, worker_runs in runs.items():
        cycles = sum(r.cycles for r, _ in worker_runs)
        seconds = sum(r.duration_s for r, _ in worker_runs)
        out[str(workers)] = {
            "cycles_per_second": cycles / seconds,
            "per_round_cycles_per_second": [r.cycles / r.duration_s for r, _ in worker_runs],
            "non_2xx": sum(r.non_2xx for r, _ in worker_runs),
            "cpu": CpuWindow.merge([w for _, w in worker_runs]),
        }
    out["ratio"] = out["2"]["cycles_per_second"] / out["1"]["cycles_per_second"]
    return out


# 2 and 3. Direct ---------------------------------------------------------------------------


def _runs_json(runs: list[direct.TaskRun]) -> dict[str, Any]:
    cycles = sum(r.cycles for r in runs)
    seconds = sum(r.seconds for r in runs)
    counters: dict[str, int] = {}
    commands: dict[str, int] = {}
    for run in runs:
        for name, value in run.counters.items():
            counters[name] = counters.get(name, 0) + value
        for name, value in run.commands.items():
            commands[name] = commands.get(name, 0) + value
    client_cpu = sum(r.cpu.used["client (bench process)"] for r in runs)
    return {
        "label": runs[0].label,
        "tasks": runs[0].tasks,
        "cycles_per_second": cycles / seconds,
        "per_round_cycles_per_second": [r.per_second for r in runs],
        "cycles": cycles,
        "seconds": seconds,
        "counters": counters,
        "redis_commands_per_cycle": {n: round(c / max(1, cycles), 2) for n, c in commands.items()},
        "cpu": CpuWindow.merge([r.cpu for r in runs]),
        "cycles_per_client_cpu_second": cycles / client_cpu,
    }


def direct_figure(url: str, valkey_pid: int, plan: Plan) -> dict[str, Any]:
    """Ours vs two PINGs per cycle on the same client."""
    ours, ceiling = asyncio.run(
        direct.direct_path(
            url,
            valkey_pid,
            tasks=64,
            warmup=plan.direct_warmup,
            duration=plan.direct_seconds,
            rounds=plan.direct_rounds,
        )
    )
    out = {"ours": _runs_json(ours), "ceiling": _runs_json(ceiling)}
    out["ratio"] = out["ours"]["cycles_per_second"] / out["ceiling"]["cycles_per_second"]
    out["ratio_per_client_cpu_second"] = (
        out["ours"]["cycles_per_client_cpu_second"] / out["ceiling"]["cycles_per_client_cpu_second"]
    )
    return out


def held_figure(url: str, valkey_pid: int, plan: Plan) -> dict[str, Any]:
    """48 of 64 keys held: ours vs one Lock per key; theirs is the better of two loop styles."""
    ours, theirs = asyncio.run(
        direct.held_keys(
            url,
            valkey_pid,
            keys=64,
            held=48,
            tasks=64,
            warmup=plan.direct_warmup,
            duration=plan.held_seconds,
            rounds=plan.held_rounds,
            sleeps=(0.0, 0.1),
        )
    )
    their_runs = [_runs_json(runs) for runs in theirs.values()]
    best = max(their_runs, key=lambda r: r["cycles_per_second"])
    out = {"ours": _runs_json(ours), "theirs": best, "theirs_variants": their_runs}
    out["ratio"] = out["ours"]["cycles_per_second"] / best["cycles_per_second"]
    return out


# 4. Size ---------------------------------------------------------------------------------


def size_figure(url: str, valkey_pid: int, plan: Plan) -> dict[str, Any]:
    """Fill a million keys, read memory, then time cycles at 10 and at 1M keys."""

    async def measure() -> dict[str, Any]:
        filled = await size.fill(url, valkey_pid, plan.size_keys, batch=5000, connections=2)
        log(
            f"filled {plan.size_keys:,} keys in {filled.fill_seconds:.1f} s:"
            f" {filled.bytes_per_key:.1f} bytes/key"
        )
        small = direct.AsyncRedisCoordinator(url, prefix="bench-size")
        await small.register("ten", 10)
        await small.aclose()
        runs: dict[str, list[size.LatencyRun]] = {"ten": [], "million": []}
        for _ in range(plan.latency_rounds):
            for process, keys in (("ten", 10), ("million", plan.size_keys)):
                runs[process].append(
                    await size.cycle_latency(url, process, keys, plan.latency_cycles, 200)
                )
        out: dict[str, Any] = {
            "keys": plan.size_keys,
            "fill_seconds": filled.fill_seconds,
            "fill_cpu": filled.fill_cpu.to_json(),
            "used_memory_before": filled.used_memory_before,
            "used_memory_after": filled.used_memory_after,
            "bytes_per_key": filled.bytes_per_key,
            "free_zset_memory_usage_bytes_per_key": filled.free_zset_bytes / plan.size_keys,
        }
        for process, process_runs in runs.items():
            latencies = [x for r in process_runs for x in r.latencies_us]
            out[process] = {
                "key_set_size": process_runs[0].key_set_size,
                "cycles": len(latencies),
                "mean_cycle_us": sum(latencies) / len(latencies),
                "median_cycle_us": percentile(latencies, 50),
                "p99_cycle_us": percentile(latencies, 99),
                "per_round_mean_us": [r.mean_us for r in process_runs],
                "valkey_us_per_evalsha": sum(r.server_us_per_evalsha for r in process_runs)
                / len(process_runs),
            }
        out["ratio"] = out["million"]["mean_cycle_us"] / out["ten"]["mean_cycle_us"]
        out["median_ratio"] = out["million"]["median_cycle_us"] / out["ten"]["median_cycle_us"]
        return out

    return asyncio.run(measure())


# 5. Batch-run options ----------------------------------------------------------------------


def options_figure(url: str, valkey_pid: int, plan: Plan) -> dict[str, Any]:
    """Valkey's cost per cycle with every batch-run option on vs none."""
    runs = asyncio.run(
        script_cost.measure(
            url,
            valkey_pid,
            tasks=16,
            warmup=plan.direct_warmup,
            duration=plan.options_seconds,
            rounds=plan.options_rounds,
        )
    )
    return script_cost.summary(runs)


def floor_figure(url: str, plan: Plan) -> dict[str, Any]:
    """Our scripts' time per cycle beside the hand-written floor's."""
    runs = asyncio.run(
        script_floor.measure(
            url, warmup=plan.direct_warmup, duration=plan.floor_seconds, rounds=plan.floor_rounds
        )
    )
    return script_floor.summary(runs)


def postgres_figure(url: str, valkey_pid: int, plan: Plan) -> dict[str, Any]:
    """The direct cycle beside the same cycle on PostgreSQL (skipped where it is missing)."""
    if postgres.binaries() is None:
        log("PostgreSQL is missing (`make bench` installs it as root): skipping its figure")
        return {"skipped": "PostgreSQL not installed (apt-get install postgresql)"}
    runs = asyncio.run(
        postgres.side_by_side(
            url,
            valkey_pid,
            tasks=64,
            keys=128,
            warmup=plan.direct_warmup,
            duration=plan.postgres_seconds,
            rounds=plan.postgres_rounds,
        )
    )
    return postgres.summary(runs, tasks=64, cores=os.cpu_count() or 1)


def _environment(valkey: EmbeddedValkey) -> dict[str, Any]:
    client = redis.Redis(port=valkey.port)
    info = client.info("server")
    client.close()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    wrk = http_load.wrk_binary()
    wrk_version = ""
    if wrk:
        probe = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)  # noqa: S603
        wrk_version = (probe.stdout + probe.stderr).splitlines()[0].strip()
    busy = machine_busy_seconds()
    time.sleep(2)
    background = (machine_busy_seconds() - busy) / 2
    return {
        "background_cores_before_start": round(background, 2),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "valkey_version": info.get("valkey_version") or info.get("redis_version"),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "wrk": wrk_version,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def measure(plan: Plan, only: set[str]) -> dict[str, Any]:
    """Every figure in `only`, on one private Valkey."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bpc-bench-") as tmp:
        work = Path(tmp)
        with EmbeddedValkey(work / "valkey") as valkey:
            valkey_pid = next(
                p.pid
                for p in psutil.Process().children()
                if p.name().startswith(("valkey", "redis"))
            )
            log(f"Valkey pid {valkey_pid} on {valkey.url}")
            results: dict[str, Any] = {"environment": _environment(valkey), "plan": plan.__dict__}
            steps = (
                ("http", lambda: http_figure(valkey, valkey_pid, plan, work)),
                (
                    "latency",
                    lambda: latency_figure(
                        valkey,
                        valkey_pid,
                        results["http"]["ours"]["cycles_per_second"],
                        plan,
                        work,
                    ),
                ),
                ("workers", lambda: workers_figure(valkey, valkey_pid, plan, work)),
                (
                    "pinned",
                    lambda: pinned_figure(
                        valkey,
                        valkey_pid,
                        rounds=plan.pinned_rounds,
                        seconds=plan.pinned_seconds,
                        work=work,
                    ),
                ),
                ("direct", lambda: direct_figure(valkey.url, valkey_pid, plan)),
                ("held", lambda: held_figure(valkey.url, valkey_pid, plan)),
                ("size", lambda: size_figure(valkey.url, valkey_pid, plan)),
                ("options", lambda: options_figure(valkey.url, valkey_pid, plan)),
                ("floor", lambda: floor_figure(valkey.url, plan)),
                (
                    "scale",
                    lambda: scale_figure(
                        valkey,
                        sizes=plan.scale_sizes,
                        repeats=plan.scale_repeats,
                        listing_keys=plan.listing_keys,
                        listing_repeats=plan.listing_repeats,
                        work=work,
                    ),
                ),
                ("postgres", lambda: postgres_figure(valkey.url, valkey_pid, plan)),
            )
            for name, step in steps:
                if name in only:
                    log(f"measuring {name}")
                    results[name] = step()
    results["wall_seconds"] = time.perf_counter() - started
    return results


def main() -> None:
    """Run every figure on one private Valkey and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers",
        type=int,
        choices=(1, 2),
        default=FULL.workers,
        help="uvicorn workers for both HTTP servers (default 1)",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (not the figures)")
    parser.add_argument("--only", nargs="*", choices=FIGURES)
    parser.add_argument("--out", type=Path, help="default bench/results.json (--quick: in /tmp)")
    parser.add_argument(
        "--table-from",
        type=Path,
        metavar="RESULTS",
        help="measure nothing: draw the table (and the README's) from a results file",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    out_path = args.out or (
        Path(tempfile.gettempdir()) / "bpc-bench-quick.json" if args.quick else RESULTS
    )
    plan = Plan(**{**plan.__dict__, "workers": args.workers})
    only = set(args.only or FIGURES)
    if "latency" in only and "http" not in only:
        parser.error("--only latency needs http too: its rate is half of http's")
    if args.table_from:
        results = json.loads(args.table_from.read_text())
        only = {name for name in FIGURES if name in results}
    else:
        results = measure(plan, only)
    results["targets"] = {name: {"op": op, "value": value} for name, (op, value) in TARGETS.items()}
    # Written before the table is drawn, so a figure the table cannot print loses no run.
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if only == set(FIGURES):
        results["verdicts"] = {
            "http_ratio": verdict("http_ratio", results["http"]["ratio"]),
            "http_non_2xx": verdict("http_non_2xx", results["http"]["non_2xx"]),
            "direct_ratio": verdict("direct_ratio", results["direct"]["ratio"]),
            "vs_hand_rolled": verdict("vs_hand_rolled", results["held"]["ratio"]),
            "size_ratio": verdict("size_ratio", results["size"]["ratio"]),
            "bytes_per_key": verdict("bytes_per_key", results["size"]["bytes_per_key"]),
            "options_cost_ratio": verdict("options_cost_ratio", results["options"]["ratio"]),
            "latency_p50_ms": verdict("latency_p50_ms", results["latency"]["half"]["p50_ms"]),
            "latency_p99_ms": verdict("latency_p99_ms", results["latency"]["half"]["p99_ms"]),
            **{name: verdict(name, v) for name, v in report_cost.values(results).items()},
        }
        table = render(results)
        results["table"] = table
        print(table)
        if not args.quick and args.out is None:
            README.write_text(update_readme(README.read_text(), markdown(results)))
            log(f"updated the table in {README}")
    else:
        print(json.dumps({k: results[k] for k in only}, indent=2, default=str))
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {out_path}")


if __name__ == "__main__":
    main()
