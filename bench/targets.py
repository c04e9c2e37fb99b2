"""Every target the benchmark holds a figure to, declared once (the table, results.json and
the README's table read them from here)."""

from __future__ import annotations

import math

TARGETS: dict[str, tuple[str, float]] = {
    "http_ratio": (">=", 0.8),
    "direct_ratio": (">=", 0.8),
    "vs_hand_rolled": (">=", 10.0),
    "size_ratio": ("<=", 1.3),
    "bytes_per_key": ("<=", 200.0),
    "options_cost_ratio": ("<=", 1.3),
    "latency_p50_ms": ("<=", 1.0),
    "latency_p99_ms": ("<=", 5.0),
    "http_non_2xx": ("==", 0),
    # Our script time per grant + release over the hand-written floor's (bench/floor/).
    "floor_plain_ratio": ("<=", 1.6),
    "floor_options_ratio": ("<=", 2.0),
    # At the largest number of processes registered (100,000 in a full run).
    "scrape_seconds": ("<", 1.0),
    "scrape_bytes": ("<", 2_000_000),
    "dashboard_seconds": ("<", 2.0),
    # Other clients' renewals while one client reads everything.
    "bystander_scrape_p99_ms": ("<", 50.0),
    "bystander_listing_p99_ms": ("<", 50.0),
    "bystander_process_list_p99_ms": ("<", 50.0),
    "idle_process_bytes": ("<=", 1500),
}

_UNITS = {
    "vs_hand_rolled": "x",
    "bytes_per_key": " B",
    "idle_process_bytes": " B",
    "scrape_seconds": " s",
    "dashboard_seconds": " s",
    "bystander_scrape_p99_ms": " ms",
    "bystander_listing_p99_ms": " ms",
    "bystander_process_list_p99_ms": " ms",
    "floor_plain_ratio": "x",
    "floor_options_ratio": "x",
}


def verdict(name: str, value: float | None) -> str:
    """PASS or MISS against the fixed target (a figure not measured misses)."""
    op, target = TARGETS[name]
    if value is None or math.isnan(value):  # not measured
        return "MISS"
    ok = {
        ">=": value >= target,
        "<=": value <= target,
        "<": value < target,
        "==": value == target,
    }[op]
    return "PASS" if ok else "MISS"


def target_text(name: str) -> str:
    """The target as printed."""
    op, target = TARGETS[name]
    if name == "scrape_bytes":
        return f"{op} {target / 1e6:g} MB"
    return f"{op} {target:g}{_UNITS.get(name, '')}"
