"""Where a client finds the service, in one order for the CLI and the Python clients alike:
an explicit URL, else COORDINATOR_URL, else the `coordinator serve` running on the data folder
(COORDINATOR_DATA_DIR, else ./.coordinator-data), else the built-in default. The token is the
explicit one, else COORDINATOR_TOKEN, wherever the URL came from.

The answer says where it came from, so a caller that fell back to the default can say so: a
silent default can be someone else's server on the same machine.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from coordinator.config import Settings
from coordinator.datadir import RunningServer, running_server

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "COORDINATOR_URL"
TOKEN_ENV = "COORDINATOR_TOKEN"  # noqa: S105 - the variable's name, not a token
DATA_DIR_ENV = "COORDINATOR_DATA_DIR"


class Source(enum.Enum):
    """Where a service URL came from, in the order they are tried."""

    ARGUMENT = "the argument"
    ENVIRONMENT = URL_ENV
    DATA_FOLDER = "the server running on the data folder"
    DEFAULT = "the built-in default"


@dataclass(frozen=True, slots=True)
class Service:
    """The service's URL and token, and where the URL came from."""

    url: str
    token: str | None
    source: Source
    # The folder asked about: the one the server runs on, or the one found empty.
    data_dir: Path | None = None


def locate(
    url: str | None = None, token: str | None = None, env: Mapping[str, str] | None = None
) -> Service:
    """The service to call: `url` unless None, else COORDINATOR_URL, else the data folder's
    running server, else DEFAULT_URL; with `token` unless None (`""`: none), else
    COORDINATOR_TOKEN."""
    env = os.environ if env is None else env
    if token is None:
        token = _get(env, TOKEN_ENV)
    if url is not None:
        return Service(url, token, Source.ARGUMENT)
    if (from_env := _get(env, URL_ENV)) is not None:
        return Service(from_env, token, Source.ENVIRONMENT)
    folder = data_dir(env)
    if (server := running_server(folder)) is not None:
        return Service(server.api_url, token, Source.DATA_FOLDER, folder)
    return Service(DEFAULT_URL, token, Source.DEFAULT, folder)


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The data folder client commands look in: COORDINATOR_DATA_DIR, else serve's default."""
    env = os.environ if env is None else env
    return Path(_get(env, DATA_DIR_ENV) or Settings().data_dir)


def local_server(env: Mapping[str, str] | None = None) -> RunningServer | None:
    """The `coordinator serve` running on this shell's data folder, if any."""
    return running_server(data_dir(env))


def _get(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value; unset and empty are alike."""
    return env.get(name, "").strip() or None
