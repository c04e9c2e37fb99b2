"""The optional parts of the package, and the one message that says how to install one.

`pip install batch-process-coordinator` gives the HTTP client and the CLI (httpx, orjson);
`[direct]` adds redis for workers on Redis itself, `[server]` the whole service. A module of
an extra is imported only where that extra's feature is used, through `require`.
"""

from __future__ import annotations

import importlib

from coordinator.config import ConfigError

PACKAGE = "batch-process-coordinator"
# Each extra and the modules whose absence means it is not installed (pyproject.toml's
# [project.optional-dependencies] names the packages; tests/test_packaging.py ties the two).
EXTRAS = {
    "direct": ("redis",),
    "server": ("redis", "starlette", "uvicorn", "prometheus_client"),
}


class MissingExtra(ConfigError):
    """A feature of an extra that is not installed: the line says which to install."""

    def __init__(self, extra: str, feature: str) -> None:
        super().__init__(f"{feature} needs the {extra} extra: pip install '{PACKAGE}[{extra}]'")
        self.extra = extra


def require(extra: str, feature: str) -> None:
    """Raise MissingExtra unless every module of `extra` imports."""
    for name in EXTRAS[extra]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            # Only the extra's own module missing; a broken install of it is its own error.
            if error.name is not None and error.name.split(".")[0] == name:
                raise MissingExtra(extra, feature) from None
            raise
