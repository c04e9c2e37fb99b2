"""`coordinator ...`: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from coordinator import __version__
from coordinator.config import ConfigError, Settings
from coordinator.embedded import EmbeddedError, EmbeddedValkey

logger = logging.getLogger("coordinator")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordinator", description="Hands out numbered batch keys to workers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the HTTP API",
        description="Run the HTTP API. Without COORDINATOR_REDIS_URL it starts a private"
        " Valkey with its data in COORDINATOR_DATA_DIR.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (8000)")
    serve.add_argument("--workers", type=int, default=1, help="API processes sharing the port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


class _Stop(Exception):
    """SIGTERM or SIGINT, after uvicorn's graceful shutdown re-raised it."""


def _stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the API, on the configured Redis or on an embedded Valkey started here."""
    import uvicorn  # noqa: PLC0415 - only the server needs it

    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    # uvicorn re-raises the stopping signal once it has shut down; with the default handler
    # that would kill this process before the embedded Valkey is stopped.
    for stopping in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stopping, _stop)
    embedded: EmbeddedValkey | None = None
    if settings.redis_url is None:
        embedded = EmbeddedValkey(settings.data_dir).start()
        settings = Settings.from_env({**os.environ, "COORDINATOR_REDIS_URL": embedded.url})
        logger.info(
            "embedded Valkey on %s, data in %s (direct workers use this URL)",
            embedded.url,
            settings.data_dir.resolve(),
        )
    elif settings.redis_url.startswith("memory://") and args.workers > 1:
        raise ConfigError("memory:// keeps state inside one process: use --workers 1")
    try:
        if args.workers == 1:
            from coordinator.app import create_app  # noqa: PLC0415

            uvicorn.run(
                create_app(settings),
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                proxy_headers=True,
            )
        else:
            # Worker processes import the factory and read the URL from the environment.
            os.environ["COORDINATOR_REDIS_URL"] = str(settings.redis_url)
            uvicorn.run(
                "coordinator.app:create_app",
                factory=True,
                host=args.host,
                port=args.port,
                workers=args.workers,
                log_level=args.log_level,
                proxy_headers=True,
            )
    except _Stop as stop:
        logger.info("stopped by %s", stop)
    finally:
        if embedded is not None:
            embedded.stop()
            logger.info("embedded Valkey stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `coordinator` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    try:
        settings = Settings.from_env()
        if args.command == "serve":
            return serve(args, settings)
    except (ConfigError, EmbeddedError) as error:
        print(f"coordinator: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
