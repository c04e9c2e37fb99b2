"""The options of the commands that call the service (--url, --token, --redis-url, --direct,
--prefix, --outage-budget, --json): accepted before the command (`coordinator --json keys x`)
and after it (`coordinator keys x --json`), where they win."""

from __future__ import annotations

import argparse
from typing import Any

from coordinator.cli import values
from coordinator.client.outage import OUTAGE_BUDGET_ENV, OUTAGE_BUDGET_SECONDS
from coordinator.locate import DEFAULT_URL

__all__ = ["DEFAULT_PREFIX", "DEFAULT_URL", "NAMES", "add"]  # DEFAULT_URL: for the parser

DEFAULT_PREFIX = "bpc"
# Their `args` attributes.
NAMES = ("url", "token", "redis_url", "direct", "prefix", "outage_budget", "json")


def add(parser: argparse.ArgumentParser, *, at_top: bool) -> None:
    """The service options; after the command they override the ones given before it."""
    # SUPPRESS after the command: an option not given there keeps the value given before.
    none: Any = None if at_top else argparse.SUPPRESS
    false: Any = False if at_top else argparse.SUPPRESS
    group = parser.add_argument_group("service options (before or after the command)")
    group.add_argument(
        "--url",
        default=none,
        help="the HTTP API (COORDINATOR_URL; else the server running in COORDINATOR_DATA_DIR;"
        f" else {DEFAULT_URL})",
    )
    group.add_argument(
        "--token", default=none, help="API token for the HTTP API (COORDINATOR_TOKEN)"
    )
    direct = group.add_mutually_exclusive_group()
    direct.add_argument(
        "--redis-url",
        default=none,
        help="run the service's scripts directly on this Redis instead of calling the API",
    )
    direct.add_argument(
        "--direct",
        action="store_true",
        default=false,
        help="run the scripts directly on the Redis of the server running in"
        " COORDINATOR_DATA_DIR (./.coordinator-data)",
    )
    group.add_argument(
        "--prefix",
        default=none,
        help="key prefix with --redis-url or --direct (COORDINATOR_KEY_PREFIX; else the"
        f" running server's with --direct; else {DEFAULT_PREFIX})",
    )
    group.add_argument(
        "--outage-budget",
        type=values.seconds,
        default=none,
        metavar="SECONDS",
        help="ride out an unreachable service (refused, reset, timed out, 503) for this long,"
        f" retrying, then exit 75 ({OUTAGE_BUDGET_ENV}; default {OUTAGE_BUDGET_SECONDS:g})",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=false,
        help="print JSON: one document, or JSON Lines for keys and events",
    )
