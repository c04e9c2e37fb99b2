"""Which client a command uses: the HTTP API (--url) or the service's Redis (--redis-url,
--direct), from the options, else the environment, else the server running on this folder
(coordinator.locate, the order the Python clients follow too)."""

from __future__ import annotations

import argparse
import os
import sys

from coordinator import locate
from coordinator.cli import values
from coordinator.cli.service_options import DEFAULT_PREFIX
from coordinator.client.outage import OUTAGE_BUDGET_ENV
from coordinator.client.sync import Coordinator, HttpCoordinator, RedisCoordinator
from coordinator.config import ConfigError


def client(args: argparse.Namespace) -> Coordinator:
    """The blocking client the options ask for."""
    prefix = args.prefix or env("COORDINATOR_KEY_PREFIX")
    # The client falls back on COORDINATOR_OUTAGE_BUDGET_SECONDS; checked here, so a bad
    # value is refused in the words of the option, before anything is called.
    budget = args.outage_budget
    if budget is None:
        budget = values.from_env(OUTAGE_BUDGET_ENV, values.seconds)
    if args.direct and args.redis_url:  # one before the command, one after it
        raise ConfigError("--direct and --redis-url name two Redis: pass one of them")
    if args.direct:
        server = locate.local_server()
        if server is None:
            raise ConfigError(
                f"--direct: no `coordinator serve` is running on {locate.data_dir().resolve()}"
                " (set COORDINATOR_DATA_DIR to its folder, or pass --redis-url)"
            )
        return RedisCoordinator(
            server.redis_url, prefix or server.key_prefix, outage_budget_seconds=budget
        )
    if args.redis_url:
        return RedisCoordinator(
            args.redis_url, prefix or DEFAULT_PREFIX, outage_budget_seconds=budget
        )
    # Empty options are left out, as empty variables are.
    service = locate.locate(args.url or None, args.token or None)
    if service.source is locate.Source.DEFAULT:
        print(f"coordinator: {default_note(service)}", file=sys.stderr)
    return HttpCoordinator(service.url, token=service.token or "", outage_budget_seconds=budget)


def default_note(service: locate.Service) -> str:
    """The one line said when the URL is the built-in default: that address may be anyone's
    server on this machine, so a command does not call it silently."""
    folder = (service.data_dir or locate.data_dir()).resolve()
    return (
        f"no --url, no {locate.URL_ENV} and no `coordinator serve` running on {folder}:"
        f" calling the built-in default {service.url} (choose with --url or {locate.URL_ENV},"
        f" or the folder with {locate.DATA_DIR_ENV})"
    )


def env(name: str) -> str | None:
    """A variable's value; unset and empty are alike."""
    return os.environ.get(name, "").strip() or None
