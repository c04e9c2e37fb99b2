"""The coordinator's benchmark: every figure side by side with its ceiling, in one run.

    make bench                     # or: .venv/bin/python -m bench.run [--workers 1|2] [--quick]

One private Valkey (coordinator.embedded.EmbeddedValkey in a temporary directory, loopback
only) serves every measurement. Prints a table and writes bench/results.json.

1. HTTP: grant + release cycles/s of `coordinator serve` under wrk (64 threads x 1
   connection each), vs a bare Starlette app on the same uvicorn stack doing one PING per
   request (bench/ceiling_app.py); grant latency p50/p99; non-2xx answers (must be 0).
2. Direct: AsyncRedisCoordinator acquire + release with 64 tasks, vs two PINGs per cycle.
3. Keys 0-47 of 64 held all along: ours vs one redis-py Lock per key tried in turn.
4. Size: mean acquire + release latency at 1,000,000 keys vs 10 keys, and used_memory per
   key after each of the million keys was granted and completed once.
5. Batch-run options: Valkey's time in the scripts (and its process CPU) per grant + release
   with every option on, vs a process with none (bench/script_cost.py).

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
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

from bench import direct, http_load, script_cost, size
from bench.cpu import CpuWindow, machine_busy_seconds
from coordinator.embedded import EmbeddedValkey, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.json"

# Commands clients send; INFO commandstats also counts those the scripts run inside EVALSHA.
TOP_LEVEL = ("evalsha", "ping", "blpop")

FIGURES = ("http", "direct", "held", "size", "options")
TARGETS = {
    "http_ratio": (">=", 0.8),
    "direct_ratio": (">=", 0.8),
    "vs_hand_rolled": (">=", 10.0),
    "size_ratio": ("<=", 1.3),
    "bytes_per_key": ("<=", 200.0),
    "options_cost_ratio": ("<=", 1.3),
    "http_non_2xx": ("==", 0),
}


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


def verdict(name: str, value: float) -> str:
    """PASS or MISS against the fixed target."""
    op, target = TARGETS[name]
    ok = {">=": value >= target, "<=": value <= target, "==": value == target}[op]
    return "PASS" if ok else "MISS"


def target_text(name: str) -> str:
    """The target as printed."""
    op, target = TARGETS[name]
    if name == "vs_hand_rolled":
        return f"{op} {target:g}x"
    if name == "bytes_per_key":
        return f"{op} {target:g} B"
    return f"{op} {target:g}"


# 1. HTTP -------------------------------------------------------------------------------


def _register(url: str, name: str, keys: int) -> None:
    body = json.dumps({"process_name": name, "key_set_size": keys}).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback URL we built
        f"{url}/api/v1/process", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        assert answer.status == 201


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
    flags = ["--workers", str(plan.workers), "--log-level", "warning"]
    python = str(ROOT / ".venv/bin/python")
    ours_port, ceiling_port = free_port(), free_port()
    ours = http_load.Server(
        [python, "-m", "coordinator.cli", "serve", "--port", str(ours_port), *flags],
        env,
        ours_port,
        work / "serve.log",
    )
    ceiling = http_load.Server(
        [python, "-m", "bench.ceiling_app", "--port", str(ceiling_port), *flags],
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


# Output --------------------------------------------------------------------------------


def _cpu_rows(name: str, cpu: dict[str, Any]) -> list[str]:
    rows = []
    for side, seconds in cpu["cpu_seconds"].items():
        rows.append(f"  {name:<28} {side:<34} {seconds:>7.1f} s {cpu['cores'][side]:>6.2f}")
        name = ""
    rows.append(
        f"  {'':<28} {'other processes on the machine':<34}"
        f" {cpu['other_processes_cpu_seconds']:>7.1f} s"
        f" {cpu['other_processes_cores']:>6.2f}"
    )
    return rows


def render(results: dict[str, Any]) -> str:
    """The table."""
    env, h, d, k, s, o = (
        results[x] for x in ("environment", "http", "direct", "held", "size", "options")
    )
    worst = max(("rotate", "once"), key=lambda v: o[v]["script_ratio"])
    wide = "{:<44} {:>16} {:>22} {:>8} {:>9} {:>6}"
    lines = [
        "Batch Process Coordinator benchmark",
        f"  {env['cpus']} cores ({env['cpu_model']}; other processes kept"
        f" {env['background_cores_before_start']:.2f} cores busy just before the run),"
        f" Valkey {env['valkey_version']} (embedded,"
        f" loopback, appendonly everysec), Python {env['python']}, redis-py {env['redis_py']}",
        f"  HTTP: `coordinator serve --workers {h['workers']} --log-level warning` vs"
        f" bench/ceiling_app.py with the same uvicorn.run arguments; load: {h['generator']}"
        f" -t{h['connections']} -c{h['connections']}",
        "",
        wide.format("figure", "ours", "ceiling / theirs", "ratio", "target", "result"),
        "-" * 110,
        wide.format(
            f"1 HTTP cycles/s ({h['connections']} connections)",
            f"{h['ours']['cycles_per_second']:,.0f}",
            f"{h['ceiling']['cycles_per_second']:,.0f} bare app",
            f"{h['ratio']:.2f}",
            target_text("http_ratio"),
            verdict("http_ratio", h["ratio"]),
        ),
        wide.format(
            "  grant latency p50 / p99 (ms)",
            f"{h['ours']['grant_p50_ms']:.1f} / {h['ours']['grant_p99_ms']:.1f}",
            f"{h['ceiling']['grant_p50_ms']:.1f} / {h['ceiling']['grant_p99_ms']:.1f}",
            "",
            "",
            "",
        ),
        wide.format(
            "  non-2xx answers (grant + release)",
            f"{h['non_2xx']}",
            f"{h['ceiling']['grant_non_2xx'] + h['ceiling']['release_non_2xx']}",
            "",
            target_text("http_non_2xx"),
            verdict("http_non_2xx", h["non_2xx"]),
        ),
        wide.format(
            "  cycles per server CPU-second (no target)",
            f"{h['ours']['cycles_per_server_cpu_second']:,.0f}",
            f"{h['ceiling']['cycles_per_server_cpu_second']:,.0f}",
            f"{h['ratio_per_server_cpu_second']:.2f}",
            "",
            "",
        ),
        wide.format(
            "2 direct cycles/s (64 tasks)",
            f"{d['ours']['cycles_per_second']:,.0f}",
            f"{d['ceiling']['cycles_per_second']:,.0f} 2xPING",
            f"{d['ratio']:.2f}",
            target_text("direct_ratio"),
            verdict("direct_ratio", d["ratio"]),
        ),
        wide.format(
            "  cycles per client CPU-second (no target)",
            f"{d['ours']['cycles_per_client_cpu_second']:,.0f}",
            f"{d['ceiling']['cycles_per_client_cpu_second']:,.0f}",
            f"{d['ratio_per_client_cpu_second']:.2f}",
            "",
            "",
        ),
        wide.format(
            "3 cycles/s, 48 of 64 keys held (64 tasks)",
            f"{k['ours']['cycles_per_second']:,.0f}",
            f"{k['theirs']['cycles_per_second']:,.0f} Lock/key",
            f"{k['ratio']:.1f}x",
            target_text("vs_hand_rolled"),
            verdict("vs_hand_rolled", k["ratio"]),
        ),
        wide.format(
            f"4 mean acquire+release us, {s['keys']:,} vs 10 keys",
            f"{s['million']['mean_cycle_us']:.0f}",
            f"{s['ten']['mean_cycle_us']:.0f} at 10 keys",
            f"{s['ratio']:.2f}",
            target_text("size_ratio"),
            verdict("size_ratio", s["ratio"]),
        ),
        wide.format(
            "  median (us) / Valkey us per EVALSHA",
            f"{s['million']['median_cycle_us']:.0f} / {s['million']['valkey_us_per_evalsha']:.1f}",
            f"{s['ten']['median_cycle_us']:.0f} / {s['ten']['valkey_us_per_evalsha']:.1f}",
            f"{s['median_ratio']:.2f}",
            "",
            "",
        ),
        wide.format(
            f"  Redis memory per key at {s['keys']:,} keys",
            f"{s['bytes_per_key']:.1f} B",
            "",
            "",
            target_text("bytes_per_key"),
            verdict("bytes_per_key", s["bytes_per_key"]),
        ),
        wide.format(
            f"5 Valkey script us per cycle, options ({worst})",
            f"{o[worst]['script_us_per_cycle']:.1f}",
            f"{o['plain']['script_us_per_cycle']:.1f} no options",
            f"{o['ratio']:.2f}",
            target_text("options_cost_ratio"),
            verdict("options_cost_ratio", o["ratio"]),
        ),
        wide.format(
            "  Valkey CPU us per cycle, rotate / once",
            f"{o['rotate']['valkey_cpu_us_per_cycle']:.1f} /"
            f" {o['once']['valkey_cpu_us_per_cycle']:.1f}",
            f"{o['plain']['valkey_cpu_us_per_cycle']:.1f} no options",
            f"{o['cpu_ratio']:.2f}",
            "",
            "",
        ),
        "",
        "Valkey commands sent per cycle (commands run inside scripts not shown): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{c} {n:g}" for c, n in per.items() if c in shown)
            for name, per, shown in (
                ("1 ours", h["ours"]["redis_commands_per_cycle"], TOP_LEVEL),
                ("1 bare app", h["ceiling"]["redis_commands_per_cycle"], TOP_LEVEL),
                ("2 ours", d["ours"]["redis_commands_per_cycle"], TOP_LEVEL),
                ("2 ceiling", d["ceiling"]["redis_commands_per_cycle"], TOP_LEVEL),
                ("3 ours", k["ours"]["redis_commands_per_cycle"], TOP_LEVEL),
                ("3 Lock per key", k["theirs"]["redis_commands_per_cycle"], (*TOP_LEVEL, "set")),
            )
        )
        + ".",
        "Hand-rolled variants (3): "
        + "; ".join(
            f"{v['label']}: {v['cycles_per_second']:,.0f} cycles/s,"
            f" {v['counters']['lock_attempts'] / max(1, v['cycles']):.0f} Lock attempts"
            " per cycle"
            for v in k["theirs_variants"]
        )
        + ". Ours waits with wait_seconds=10 (BLPOP);"
        f" {k['ours']['counters']['no_free_key_after_wait']} waits ended without a key.",
        f"Fill: {s['keys']:,} keys granted + completed in {s['fill_seconds']:.1f} s (pipelined"
        f" EVALSHA); used_memory {s['used_memory_before']:,} -> {s['used_memory_after']:,};"
        f" free zset MEMORY USAGE {s['free_zset_memory_usage_bytes_per_key']:.1f} B/key.",
        "",
        "CPU per window (CPU seconds; cores = CPU seconds / wall seconds; the machine has"
        f" {env['cpus']})",
        f"  {'measurement':<28} {'side':<34} {'cpu':>9} {'cores':>6}",
    ]
    server = f"server (uvicorn, {h['workers']} worker{'s' if h['workers'] > 1 else ''})"
    for label, cpu in (
        ("1 HTTP ours", h["ours"]["cpu"]),
        ("1 HTTP ceiling (bare app)", h["ceiling"]["cpu"]),
        ("2 direct ours", d["ours"]["cpu"]),
        ("2 direct ceiling (2xPING)", d["ceiling"]["cpu"]),
        ("3 held: ours", k["ours"]["cpu"]),
        ("3 held: Lock per key (best)", k["theirs"]["cpu"]),
        (f"4 fill of {s['keys']:,} keys", s["fill_cpu"]),
    ):
        renamed = dict(cpu)
        renamed["cpu_seconds"] = {
            server if n == "server" else n: v for n, v in cpu["cpu_seconds"].items()
        }
        renamed["cores"] = {server if n == "server" else n: v for n, v in cpu["cores"].items()}
        lines += _cpu_rows(label, renamed)
    lines.append(f"Total wall time {results['wall_seconds']:.0f} s.")
    return "\n".join(lines)


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
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    out_path = args.out or (
        Path(tempfile.gettempdir()) / "bpc-bench-quick.json" if args.quick else RESULTS
    )
    plan = Plan(**{**plan.__dict__, "workers": args.workers})
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
            only = set(args.only or FIGURES)
            steps = (
                ("http", lambda: http_figure(valkey, valkey_pid, plan, work)),
                ("direct", lambda: direct_figure(valkey.url, valkey_pid, plan)),
                ("held", lambda: held_figure(valkey.url, valkey_pid, plan)),
                ("size", lambda: size_figure(valkey.url, valkey_pid, plan)),
                ("options", lambda: options_figure(valkey.url, valkey_pid, plan)),
            )
            for name, step in steps:
                if name in only:
                    log(f"measuring {name}")
                    results[name] = step()
    results["wall_seconds"] = time.perf_counter() - started
    results["targets"] = {name: {"op": op, "value": value} for name, (op, value) in TARGETS.items()}
    if only == set(FIGURES):
        results["verdicts"] = {
            "http_ratio": verdict("http_ratio", results["http"]["ratio"]),
            "http_non_2xx": verdict("http_non_2xx", results["http"]["non_2xx"]),
            "direct_ratio": verdict("direct_ratio", results["direct"]["ratio"]),
            "vs_hand_rolled": verdict("vs_hand_rolled", results["held"]["ratio"]),
            "size_ratio": verdict("size_ratio", results["size"]["ratio"]),
            "bytes_per_key": verdict("bytes_per_key", results["size"]["bytes_per_key"]),
            "options_cost_ratio": verdict("options_cost_ratio", results["options"]["ratio"]),
        }
        table = render(results)
        results["table"] = table
        print(table)
    else:
        print(json.dumps({k: results[k] for k in only}, indent=2, default=str))
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {out_path}")


if __name__ == "__main__":
    main()
