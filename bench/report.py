"""The benchmark's table: every figure beside its ceiling and its target, and the CPU each
side used (bench/run.py measures; this prints)."""

from __future__ import annotations

from typing import Any

from bench import report_cost
from bench.targets import TARGETS, target_text, verdict

__all__ = ["FIGURES", "TARGETS", "markdown", "render", "update_readme", "verdict"]

# Commands clients send; INFO commandstats also counts those the scripts run inside EVALSHA.
TOP_LEVEL = ("evalsha", "ping", "blpop")

FIGURES = (
    "http", "latency", "workers", "pinned", "direct", "held", "size", "options", "floor", "scale",
    "postgres",
)  # fmt: skip


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
    env, h, d, k, s, o, lat, w = (
        results[x]
        for x in ("environment", "http", "direct", "held", "size", "options", "latency", "workers")
    )
    half, seq = lat["half"], lat["sequential"]
    worst = max(("rotate", "once"), key=lambda v: o[v]["script_ratio"])
    wide = "{:<44} {:>16} {:>22} {:>8} {:>9} {:>6}"
    lines = [
        "Batch Process Coordinator benchmark",
        f"  {env['cpus']} cores ({env['cpu_model']}; other processes kept"
        f" {env['background_cores_before_start']:.2f} cores busy just before the run),"
        f" Valkey {env['valkey_version']} (embedded,"
        f" loopback, appendonly everysec), Python {env['python']}, redis-py {env['redis_py']}",
        f"  HTTP: `coordinator serve --workers {h['workers']}` at its defaults (a JSON line per"
        " request, metrics) vs bench/ceiling_app.py (one PING per request) with the same uvicorn"
        f" arguments; load: {h['generator']} -t{h['connections']} -c{h['connections']}",
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
            f"  grant ms at {half['offered_per_second']:,.0f}/s open loop: p50",
            f"{half['p50_ms']:.2f}",
            f"{h['ours']['cycles_per_second']:,.0f}/s saturates",
            "",
            target_text("latency_p50_ms"),
            verdict("latency_p50_ms", half["p50_ms"]),
        ),
        wide.format(
            "    p99 / p99.9 (16 connections, half the rate)",
            f"{half['p99_ms']:.2f} / {half['p999_ms']:.2f}",
            "",
            "",
            target_text("latency_p99_ms"),
            verdict("latency_p99_ms", half["p99_ms"]),
        ),
        wide.format(
            "    one client, 200 grants/s: p50 / p99 / p99.9",
            f"{seq['p50_ms']:.2f} / {seq['p99_ms']:.2f} / {seq['p999_ms']:.2f}",
            "",
            "",
            "",
            "",
        ),
        wide.format(
            f"  --workers 2 vs 1, cycles/s (wrk on core {w['load_generator_core']})",
            f"{w['2']['cycles_per_second']:,.0f}",
            f"{w['1']['cycles_per_second']:,.0f} 1 worker",
            f"{w['ratio']:.2f}",
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
    ]
    for r in report_cost.rows(results):
        # A long label gets a line of its own, its figures the next.
        label = r.figure if len(r.figure) <= 44 else ""
        if not label:
            lines.append(r.figure)
        lines.append(
            wide.format(label, r.ours, r.theirs, r.ratio, r.target_text(), r.verdict_text())
        )
    lines += [
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
    server = "server (uvicorn, its workers)"
    for label, cpu in (
        ("1 HTTP ours", h["ours"]["cpu"]),
        ("1 HTTP ceiling (bare app)", h["ceiling"]["cpu"]),
        ("1 latency, half the rate", half["cpu"]),
        ("1 --workers 1 (wrk pinned)", w["1"]["cpu"]),
        ("1 --workers 2 (wrk pinned)", w["2"]["cpu"]),
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


# The README's table ---------------------------------------------------------------------

README_BEGIN = "<!-- make bench: table begins -->"
README_END = "<!-- make bench: table ends -->"


def _cores(cpu: dict[str, Any]) -> str:
    """What each side used, in cores: "server 0.93, valkey 0.25, load generator 0.22"."""
    return ", ".join(f"{side} {cores:.2f}" for side, cores in cpu["cores"].items())


def _met(name: str, value: float) -> str:
    return f"{target_text(name)} — {'met' if verdict(name, value) == 'PASS' else 'missed'}"


def markdown(results: dict[str, Any]) -> str:
    """The README's table of a full run: each figure, its ceiling, the ratio, the target, and
    the cores each side used."""
    env, h, d, k, s, o, lat, w = (
        results[x]
        for x in ("environment", "http", "direct", "held", "size", "options", "latency", "workers")
    )
    half, seq = lat["half"], lat["sequential"]
    worst = max(("rotate", "once"), key=lambda v: o[v]["script_ratio"])
    rows = [
        (
            "HTTP grant+release cycles/s, wrk 64 connections, 1 worker, logs and metrics on",
            f"{h['ours']['cycles_per_second']:,.0f}",
            f"{h['ceiling']['cycles_per_second']:,.0f} (same uvicorn stack, routes doing one PING)",
            f"{h['ratio']:.2f}",
            _met("http_ratio", h["ratio"]),
            f"ours: {_cores(h['ours']['cpu'])}; ceiling: {_cores(h['ceiling']['cpu'])}",
        ),
        (
            f"grant latency, {half['offered_per_second']:,.0f} grants/s offered open loop"
            " (half the saturating rate), 16 connections: p50 / p99 / p99.9",
            f"{half['p50_ms']:.2f} / {half['p99_ms']:.2f} / {half['p999_ms']:.2f} ms",
            "",
            "",
            f"p50 {_met('latency_p50_ms', half['p50_ms'])}; p99"
            f" {_met('latency_p99_ms', half['p99_ms'])}",
            _cores(half["cpu"]),
        ),
        (
            "grant latency, one client, 200 grants/s: p50 / p99 / p99.9",
            f"{seq['p50_ms']:.2f} / {seq['p99_ms']:.2f} / {seq['p999_ms']:.2f} ms",
            "",
            "",
            "",
            "",
        ),
        (
            f"`--workers 2` vs 1, cycles/s (wrk pinned to core {w['load_generator_core']})",
            f"{w['2']['cycles_per_second']:,.0f}",
            f"{w['1']['cycles_per_second']:,.0f} (1 worker)",
            f"{w['ratio']:.2f}",
            "",
            f"2 workers: {_cores(w['2']['cpu'])}; 1: {_cores(w['1']['cpu'])}",
        ),
        (
            "direct (`AsyncRedisCoordinator`) cycles/s, 64 tasks",
            f"{d['ours']['cycles_per_second']:,.0f}",
            f"{d['ceiling']['cycles_per_second']:,.0f} (two PINGs per cycle, same client code)",
            f"{d['ratio']:.2f}",
            _met("direct_ratio", d["ratio"]),
            f"ours: {_cores(d['ours']['cpu'])}; ceiling: {_cores(d['ceiling']['cpu'])}",
        ),
        (
            "48 of 64 keys held by others, 64 workers, cycles/s",
            f"{k['ours']['cycles_per_second']:,.0f}",
            f"{k['theirs']['cycles_per_second']:,.0f} (a redis-py `Lock` per key)",
            f"{k['ratio']:.1f}x",
            _met("vs_hand_rolled", k["ratio"]),
            f"ours: {_cores(k['ours']['cpu'])}",
        ),
        (
            f"acquire+release at {s['keys']:,} vs 10 keys, mean",
            f"{s['million']['mean_cycle_us']:.0f} µs",
            f"{s['ten']['mean_cycle_us']:.0f} µs",
            f"{s['ratio']:.2f}",
            _met("size_ratio", s["ratio"]),
            "",
        ),
        (
            f"Redis memory per key, {s['keys']:,} keys all completed once",
            f"{s['bytes_per_key']:.1f} B",
            "",
            "",
            _met("bytes_per_key", s["bytes_per_key"]),
            "",
        ),
        (
            f"Valkey script time per grant+release, every batch-run option on ({worst})",
            f"{o[worst]['script_us_per_cycle']:.1f} µs",
            f"{o['plain']['script_us_per_cycle']:.1f} µs (no options)",
            f"{o['ratio']:.2f}",
            _met("options_cost_ratio", o["ratio"]),
            f"Valkey process CPU per cycle: {o['rotate']['valkey_cpu_us_per_cycle']:.0f} /"
            f" {o['once']['valkey_cpu_us_per_cycle']:.0f} µs (rotate / once) vs"
            f" {o['plain']['valkey_cpu_us_per_cycle']:.0f}",
        ),
    ]
    rows += [
        (r.figure, r.ours, r.theirs, r.ratio, r.met_text(), r.note)
        for r in report_cost.rows(results)
    ]
    lines = [
        f"`make bench` on {env['date_utc'][:10]}: {env['cpus']} cores ({env['cpu_model']}),"
        f" Valkey {env['valkey_version']}, Python {env['python']}, redis-py {env['redis_py']};"
        f" {results['wall_seconds'] / 60:.0f} minutes. CPU is in cores (CPU seconds per"
        " second of the window).",
        "",
        "| figure | ours | ceiling / theirs | ratio | target | CPU each side used / notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def update_readme(readme: str, table: str) -> str:
    """The README with the text between its two markers replaced by `table`."""
    head, found, rest = readme.partition(README_BEGIN)
    _, found_end, tail = rest.partition(README_END)
    if not found or not found_end:
        raise ValueError(f"README.md lacks the markers {README_BEGIN!r} and {README_END!r}")
    return f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}"
