"""Which client a command uses: the HTTP API (--url) or the service's Redis (--redis-url,
--direct), from the options, else the environment, else the server running on this folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from coordinator.cli import values
from coordinator.cli.service_options import DEFAULT_PREFIX, DEFAULT_URL
from coordinator.client.outage import OUTAGE_BUDGET_ENV
from coordinator.client.sync import Coordinator, HttpCoordinator, RedisCoordinator
from coordinator.config import ConfigError, Settings
from coordinator.datadir import RunningServer, running_server


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
        server = _running_server()
        if server is None:
            raise ConfigError(
                f"--direct: no `coordinator serve` is running on {_data_dir().resolve()}"
                " (set COORDINATOR_DATA_DIR to its folder, or pass --redis-url)"
            )
        return RedisCoordinator(
            server.redis_url, prefix or server.key_prefix, outage_budget_seconds=budget
        )
    if args.redis_url:
        return RedisCoordinator(
            args.redis_url, prefix or DEFAULT_PREFIX, outage_budget_seconds=budget
        )
    url = args.url or env("COORDINATOR_URL")
    if url is None:
        server = _running_server()
        url = server.api_url if server else DEFAULT_URL
    token = args.token or env("COORDINATOR_TOKEN")
    return HttpCoordinator(url, token=token, outage_budget_seconds=budget)


def env(name: str) -> str | None:
    """A variable's value; unset and empty are alike."""
    return os.environ.get(name, "").strip() or None


def _data_dir() -> Path:
    return Path(env("COORDINATOR_DATA_DIR") or Settings().data_dir)


def _running_server() -> RunningServer | None:
    """The `coordinator serve` running on this shell's data folder, if any."""
    return running_server(_data_dir())
