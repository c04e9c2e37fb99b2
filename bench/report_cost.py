"""The table's rows on what grows with what exists and what the alternative costs: our scripts
beside the hand-written floor, reading everything at 1,000 to 100,000 processes, bystanders
meanwhile, memory per idle process, and the same cycle on PostgreSQL (bench/report.py prints
them after its own rows, in the text table and the README's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.targets import target_text, verdict


@dataclass(frozen=True)
class Row:
    """One line of the table; `targets` names the figures (bench/targets.py) it is held to."""

    figure: str
    ours: str
    theirs: str = ""
    ratio: str = ""
    targets: tuple[tuple[str, float | None], ...] = ()
    note: str = ""

    def verdict_text(self) -> str:
        """PASS / MISS for each target, as the text table prints them."""
        return " ".join(verdict(name, value) for name, value in self.targets)

    def target_text(self) -> str:
        """The targets, as the text table prints them."""
        return "; ".join(target_text(name) for name, _ in self.targets)

    def met_text(self) -> str:
        """The targets with their verdict, as the README prints them."""
        return "; ".join(
            f"{target_text(name)} — {'met' if verdict(name, value) == 'PASS' else 'missed'}"
            for name, value in self.targets
        )


def _bytes(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.0f} kB"
    return f"{n:.0f} B"


def _seconds(s: float | None) -> str:
    if s is None or math.isnan(s):
        return "timed out"
    return f"{s:.3f}" if s < 0.1 else f"{s:.2f}" if s < 10 else f"{s:.0f}"


def values(results: dict[str, Any]) -> dict[str, float | None]:
    """The figure each of this module's targets is on, from whatever was measured."""
    out: dict[str, float | None] = {}
    if "floor" in results:
        out["floor_plain_ratio"] = results["floor"]["plain_ratio"]
        out["floor_options_ratio"] = results["floor"]["options_ratio"]
    if "scale" in results:
        s = results["scale"]
        top = s["sizes"][str(s["largest"])]
        out["scrape_seconds"] = top["metrics"]["seconds_max"]
        out["scrape_bytes"] = top["metrics"]["bytes"]
        out["dashboard_seconds"] = top["dashboard"]["seconds"]
        out["bystander_scrape_p99_ms"] = s["bystanders_scrape"]["p99_ms"]
        out["bystander_listing_p99_ms"] = s["bystanders_listing"]["p99_ms"]
        out["bystander_process_list_p99_ms"] = s["bystanders_process_list"]["p99_ms"]
        out["idle_process_bytes"] = s["memory"]["own_keys_bytes"]
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the figures measured."""
    out: list[Row] = []
    if "pinned" in results and "skipped" not in results["pinned"]:
        out += _pinned(results["pinned"])
    if "floor" in results:
        out += _floor(results["floor"])
    if "scale" in results:
        out += _scale(results["scale"])
    if "postgres" in results:
        out += _postgres(results["postgres"])
    return out


def _pinned(p: dict[str, Any]) -> list[Row]:
    ours, ceiling = p["ours_pinned"], p["ceiling_pinned"]
    steal = sum(v["steal_seconds"] for v in p.values() if isinstance(v, dict))
    return [
        Row(
            f"HTTP cycles/s, each server alone on core {p['server_core']}, Valkey and wrk on"
            f" {p['valkey_and_wrk_cores']}",
            f"{ours['cycles_per_second']:,.0f}",
            f"{ceiling['cycles_per_second']:,.0f} bare app",
            f"{p['ratio_pinned']:.2f}",
            note=f"unpinned in the same run: {p['ratio_unpinned']:.2f}; server cores pinned"
            f" {max(ours['server_cores']):.2f} vs {max(ceiling['server_cores']):.2f}; per"
            f" server CPU-second {p['ratio_per_server_cpu_second']:.2f}",
        ),
        Row(
            "  the bare app beside ours (idle) over it alone, unpinned",
            f"{p['ceiling_beside_ours']['cycles_per_second']:,.0f}",
            f"{p['ceiling_alone']['cycles_per_second']:,.0f} alone",
            f"{p['ceiling_beside_over_alone']:.2f}",
            note=f"steal over every window: {steal:.2f} s",
        ),
    ]


def _floor(f: dict[str, Any]) -> list[Row]:
    worst = max(("rotate", "once"), key=lambda v: f[v]["ratio"])
    floor = f["floor"]
    theirs = f"{floor['script_us_per_cycle']:.1f} µs (hand-written floor, bench/floor/)"
    rows = [
        Row(
            "Valkey script time per grant+release vs the floor, no batch-run options",
            f"{f['plain']['script_us_per_cycle']:.1f} µs",
            theirs,
            f"{f['plain_ratio']:.2f}",
            (("floor_plain_ratio", f["plain_ratio"]),),
            f"commands the scripts call per cycle: {f['plain']['commands_per_cycle']:g}"
            f" vs {floor['commands_per_cycle']:g}",
        ),
        Row(
            f"  every option on and a request_id on each grant ({worst})",
            f"{f[worst]['script_us_per_cycle']:.1f} µs",
            theirs,
            f"{f['options_ratio']:.2f}",
            (("floor_options_ratio", f["options_ratio"]),),
            f"commands per cycle: {f[worst]['commands_per_cycle']:g}",
        ),
    ]
    # Results measured before the row existed have no `commands` variant.
    if commands := f.get("commands"):
        rows.insert(
            1,
            Row(
                "  our plain cycle's own commands, in its order, with Lua as plain as the floor's",
                f"{commands['script_us_per_cycle']:.1f} µs",
                theirs,
                f"{commands['ratio']:.2f}",
                note="the least a rewrite of the Lua alone reaches (bench/floor/commands_*.lua)",
            ),
        )
    return rows


def _scale(s: dict[str, Any]) -> list[Row]:
    sizes = list(s["sizes"])
    at = [s["sizes"][n] for n in sizes]
    counts = " / ".join(f"{int(n):,}" for n in sizes)
    top, largest = at[-1], f"{s['largest']:,}"
    metrics = [a["metrics"] for a in at]
    listing, scrape, memory = s["bystanders_listing"], s["bystanders_scrape"], s["memory"]
    whole = s["bystanders_process_list"]
    return [
        Row(
            f"`GET /metrics` at {counts} idle processes: seconds (slowest of the repeats)",
            " / ".join(_seconds(m["seconds_max"]) for m in metrics) + " s",
            targets=(("scrape_seconds", top["metrics"]["seconds_max"]),),
            note="Valkey commands per scrape: "
            + " / ".join(f"{m['valkey_commands']:,}" for m in metrics),
        ),
        Row(
            "  its size and series",
            " / ".join(_bytes(m["bytes"]) for m in metrics),
            targets=(("scrape_bytes", top["metrics"]["bytes"]),),
            note="series: " + " / ".join(f"{m['series']:,}" for m in metrics),
        ),
        Row(
            f"one process page (`GET /api/v1/process?limit=100`) at {counts}",
            " / ".join(_seconds(a["page"]["seconds_max"]) for a in at) + " s",
            note="bytes: " + " / ".join(_bytes(a["page"]["bytes"]) for a in at),
        ),
        Row(
            f"dashboard first render (Chromium, to the first listed process) at {counts}",
            " / ".join(_seconds(a["dashboard"]["seconds"]) for a in at) + " s",
            targets=(("dashboard_seconds", top["dashboard"]["seconds"]),),
            note="API bytes fetched, first render / per second after: "
            + " / ".join(
                f"{_bytes(a['dashboard'].get('api_bytes_first_render', math.nan))}"
                f" + {_bytes(a['dashboard'].get('api_bytes_per_second_after', math.nan))}/s"
                for a in at
            ),
        ),
        Row(
            f"bystanders' renewal p99 during a scrape at {largest} processes",
            f"{scrape['p99_ms']:.1f} ms",
            f"{scrape['quiet_p99_ms']:.1f} ms just before",
            targets=(("bystander_scrape_p99_ms", scrape["p99_ms"]),),
            note=f"{scrape['renewals_during']} renewals, max {scrape['max_ms']:.0f} ms,"
            f" {scrape['renewal_errors']} errors",
        ),
        Row(
            f"  during a whole process list (`GET /api/v1/process`, no limit) at {largest}",
            f"{whole['p99_ms']:.1f} ms",
            f"{whole['quiet_p99_ms']:.1f} ms just before",
            targets=(("bystander_process_list_p99_ms", whole["p99_ms"]),),
            note=f"list {_seconds(whole['heavy'][0]['seconds'])} s,"
            f" {_bytes(whole['heavy'][0]['bytes'])}; {whole['renewals_during']} renewals,"
            f" max {whole['max_ms']:.0f} ms",
        ),
        Row(
            f"  during a whole listing of a {s['listing_keys']:,}-key process, every key touched",
            f"{listing['p99_ms']:.1f} ms",
            f"{listing['quiet_p99_ms']:.1f} ms just before",
            targets=(("bystander_listing_p99_ms", listing["p99_ms"]),),
            note=f"listing {_seconds(listing['heavy'][0]['seconds'])} s,"
            f" {_bytes(listing['heavy'][0]['bytes'])}; {listing['renewals_during']} renewals,"
            f" max {listing['max_ms']:.0f} ms, {listing['renewal_errors']} errors",
        ),
        Row(
            "Redis memory per idle process (MEMORY USAGE of its keys)",
            f"{memory['own_keys_bytes']:,.0f} B",
            targets=(("idle_process_bytes", memory["own_keys_bytes"]),),
            note=f"+ {memory['registry_share_bytes']:.0f} B of the registry's;"
            f" used_memory grew {memory['used_memory_per_process']:,.0f} B per process",
        ),
    ]


def _postgres(p: dict[str, Any]) -> list[Row]:
    if "skipped" in p:
        return [
            Row("PostgreSQL `FOR UPDATE SKIP LOCKED`, same cycle", "not measured", p["skipped"])
        ]
    ours, pg, tx = p["ours"], p["postgres"], p["postgres_transaction"]
    version = f"PostgreSQL {p['postgres_version']}"
    return [
        Row(
            f"grant+release cycles/s, {p['tasks']} tasks: ours direct vs a table of keys",
            f"{ours['cycles_per_second']:,.0f}",
            f"{pg['cycles_per_second']:,.0f} ({version}, `FOR UPDATE SKIP LOCKED`, asyncpg)",
            f"{p['ratio']:.2f}",
            note=f"client CPU per cycle: {ours['client_cpu_us_per_cycle']:.0f} vs"
            f" {pg['client_cpu_us_per_cycle']:.0f} µs",
        ),
        Row(
            "  server CPU per cycle (Valkey vs every postgres process)",
            f"{ours['server_cpu_us_per_cycle']:.0f} µs",
            f"{pg['server_cpu_us_per_cycle']:.0f} µs",
            f"{p['server_cpu_ratio']:.2f}",
            note="as a transaction (SELECT … SKIP LOCKED, then UPDATE):"
            f" {tx['cycles_per_second']:,.0f} cycles/s, {tx['server_cpu_us_per_cycle']:.0f} µs",
        ),
        Row(
            "  one process's ceiling per server core (1e6 / CPU µs per cycle)",
            f"{ours['cycles_per_server_core']:,.0f} cycles/s (one core: one slot)",
            f"{pg['cycles_per_server_core']:,.0f} cycles/s per core, every core",
            "",
            note=f"the table passes our one-core ceiling at {p['cores_to_match_ours']:.1f} cores",
        ),
    ]
