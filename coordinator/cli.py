"""`coordinator ...`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from coordinator import __version__, output
from coordinator.auth import load_tokens, new_token
from coordinator.client.sync import Coordinator, HttpCoordinator, RedisCoordinator
from coordinator.config import ConfigError, Settings
from coordinator.datadir import DataDir, RunningServer, running_server
from coordinator.embedded import EmbeddedError, EmbeddedValkey
from coordinator.errors import CoordinatorError
from coordinator.eviction import refuse_evicting
from coordinator.models import BatchKey, Process
from coordinator.run import run_job

logger = logging.getLogger("coordinator")
FOLLOW_POLL_SECONDS = 0.5
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PREFIX = "bpc"


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
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (COORDINATOR_LOG_LEVEL; default info); each request is one JSON line",
    )
    serve.add_argument(
        "--insecure-open",
        action="store_true",
        help="allow binding a non-loopback address with no API tokens configured",
    )

    token = commands.add_parser("token", help="make API tokens")
    token_commands = token.add_subparsers(dest="action", required=True)
    create = token_commands.add_parser(
        "create", help="print a new token once, and the line that grants it"
    )
    create.add_argument("--role", choices=["admin", "worker"], required=True)
    create.add_argument("--processes", help="limit it to these process names (a,b,reports-*)")

    _add_client_commands(commands)
    return parser


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that call the service, over HTTP or directly on Redis."""
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url",
        help="the HTTP API (COORDINATOR_URL; else the server running in COORDINATOR_DATA_DIR;"
        f" else {DEFAULT_URL})",
    )
    direct = client.add_mutually_exclusive_group()
    direct.add_argument(
        "--redis-url", help="run the scripts directly on this Redis instead of calling the API"
    )
    direct.add_argument(
        "--direct",
        action="store_true",
        help="run the scripts directly on the Redis of the server running in"
        " COORDINATOR_DATA_DIR (./.coordinator-data)",
    )
    client.add_argument(
        "--prefix",
        help="key prefix with --redis-url or --direct (COORDINATOR_KEY_PREFIX; else the"
        f" running server's with --direct; else {DEFAULT_PREFIX})",
    )
    client.add_argument("--json", action="store_true", help="print JSON instead of a table")
    client.add_argument(
        "--token",
        default=os.environ.get("COORDINATOR_TOKEN"),
        help="API token for --url (COORDINATOR_TOKEN)",
    )

    process = commands.add_parser(
        "process", help="list, register or delete processes, or purge a deleted one's history"
    )
    process_commands = process.add_subparsers(dest="action", required=True)
    process_commands.add_parser("list", parents=[client], help="registered processes")
    register = process_commands.add_parser("register", parents=[client], help="register one")
    register.add_argument("name")
    register.add_argument("--keys", type=int, help="key_set_size (default 10)")
    register.add_argument("--lease-seconds", type=int, help="default lease of its grants")
    delete = process_commands.add_parser("delete", parents=[client], help="delete one")
    delete.add_argument("name")
    purge = process_commands.add_parser(
        "purge",
        parents=[client],
        help="forget a deleted process's history now (admin); it otherwise expires by itself",
    )
    purge.add_argument("name")

    keys = commands.add_parser("keys", parents=[client], help="the state of a process's keys")
    keys.add_argument("name")
    acquire = commands.add_parser("acquire", parents=[client], help="lease a key")
    acquire.add_argument("name")
    acquire.add_argument("--machine", default=socket.gethostname())
    acquire.add_argument("--lease-seconds", type=int)
    acquire.add_argument("--wait", type=float, default=0, help="seconds to wait for a free key")
    renew = commands.add_parser("renew", parents=[client], help="extend a lease")
    renew.add_argument("external_id")
    renew.add_argument("--lease-seconds", type=int)
    release = commands.add_parser("release", parents=[client], help="end a lease")
    release.add_argument("external_id")
    release.add_argument("--outcome", choices=["completed", "failed"], default="completed")
    revoke = commands.add_parser("revoke", parents=[client], help="end a lease (admin)")
    revoke.add_argument("external_id")
    events = commands.add_parser("events", parents=[client], help="a process's history")
    events.add_argument("name")
    events.add_argument("--after", default="-", help="only events after this event id")
    events.add_argument("--limit", type=int, default=100)
    events.add_argument("--follow", action="store_true", help="keep printing new events")

    run = commands.add_parser(
        "run",
        parents=[client],
        help="hold a key while a command runs",
        description="Acquire a key, run COMMAND with BATCH_KEY, KEY_SET_SIZE, FENCING_TOKEN,"
        " EXTERNAL_ID and PROCESS_NAME in its environment, renew while it runs, release"
        " `completed` on exit 0 and `failed` otherwise; exit with the command's status.",
    )
    run.add_argument("name")
    run.add_argument("--machine", default=socket.gethostname())
    run.add_argument("--lease-seconds", type=int)
    run.add_argument("--wait", type=float, default=0, help="seconds to wait for a free key")
    # Not REMAINDER: that would swallow the options after NAME (main() splits off `-- ...`).
    run.add_argument("command_rest", nargs="*", metavar="-- COMMAND ARGS...")


def _client(args: argparse.Namespace) -> Coordinator:
    prefix = args.prefix or _env("COORDINATOR_KEY_PREFIX")
    if args.direct:
        server = _running_server()
        if server is None:
            raise ConfigError(
                f"--direct: no `coordinator serve` is running on {_data_dir().resolve()}"
                " (set COORDINATOR_DATA_DIR to its folder, or pass --redis-url)"
            )
        return RedisCoordinator(server.redis_url, prefix or server.key_prefix)
    if args.redis_url:
        return RedisCoordinator(args.redis_url, prefix or DEFAULT_PREFIX)
    url = args.url or _env("COORDINATOR_URL")
    if url is None:
        server = _running_server()
        url = server.api_url if server else DEFAULT_URL
    return HttpCoordinator(url, token=args.token)


def _env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def _data_dir() -> Path:
    return Path(_env("COORDINATOR_DATA_DIR") or Settings().data_dir)


def _running_server() -> RunningServer | None:
    """The `coordinator serve` running on this shell's data folder, if any."""
    return running_server(_data_dir())


def client_command(args: argparse.Namespace) -> int:
    """Every command but `serve`: one call through the chosen transport, then print."""
    if args.command == "run":
        command = args.command_args
        if not command:
            raise ConfigError("run needs a command: coordinator run PROCESS -- COMMAND ARGS...")
    with _client(args) as coordinator:
        if args.command == "events":
            return _print_events(coordinator, args)
        if args.command == "process" and args.action == "purge":
            coordinator.purge_history(args.name)
            print(f"purged the history of {args.name}")
            return 0
        if args.command == "run":
            return run_job(coordinator, args.name, args.machine, command,
                           wait_seconds=args.wait, lease_seconds=args.lease_seconds)  # fmt: skip
        result = _CALLS[args.command if args.command != "process" else args.action](
            coordinator, args
        )
    print(_render(result, as_json=args.json))
    return 0


Result = Process | BatchKey | list[Process] | list[BatchKey]
# One call per command (`process` commands by their action).
_CALLS: dict[str, Callable[[Coordinator, argparse.Namespace], Result]] = {
    "list": lambda c, a: c.processes(),
    "register": lambda c, a: c.register(a.name, a.keys, a.lease_seconds),
    "delete": lambda c, a: c.unregister(a.name),
    "keys": lambda c, a: c.keys(a.name),
    "acquire": lambda c, a: c.acquire(a.name, a.machine, a.lease_seconds, a.wait),
    "renew": lambda c, a: c.renew(a.external_id, a.lease_seconds),
    "release": lambda c, a: c.release(a.external_id, a.outcome),
    "revoke": lambda c, a: c.revoke(a.external_id),
}


def _print_events(coordinator: Coordinator, args: argparse.Namespace) -> int:
    """Print events, and with --follow keep polling for new ones until interrupted."""
    after = args.after
    try:
        while True:
            batch = coordinator.events(args.name, after, args.limit)
            for event in batch:
                print(output.event_line(event, as_json=args.json), flush=True)
            if batch:
                after = batch[-1].id
            if not args.follow:
                return 0
            if not batch:
                time.sleep(FOLLOW_POLL_SECONDS)
    except KeyboardInterrupt:
        return 0


def _render(result: Process | BatchKey | list[Process] | list[BatchKey], *, as_json: bool) -> str:
    if as_json:
        return output.as_json(result)
    if isinstance(result, Process):
        return output.processes_table([result])
    if isinstance(result, BatchKey):
        return output.keys_table([result])
    if result and isinstance(result[0], BatchKey):
        return output.keys_table([k for k in result if isinstance(k, BatchKey)])
    return output.processes_table([p for p in result if isinstance(p, Process)])


class _Stop(Exception):
    """SIGTERM or SIGINT, after uvicorn's graceful shutdown re-raised it."""


def _stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the API, on the configured Redis or on an embedded Valkey started here."""
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if not load_tokens(settings) and not _is_loopback(args.host) and not args.insecure_open:
        raise ConfigError(
            f"no API tokens are configured, so binding {args.host} would open the API to the"
            " network: set COORDINATOR_TOKENS_FILE (see `coordinator token create`), bind"
            " 127.0.0.1, or pass --insecure-open"
        )
    memory = settings.redis_url is not None and settings.redis_url.startswith("memory://")
    if memory and args.workers > 1:
        raise ConfigError("memory:// keeps state inside one process: use --workers 1")
    # uvicorn re-raises the stopping signal once it has shut down; with the default handler
    # that would kill this process before the embedded Valkey is stopped.
    for stopping in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stopping, _stop)
    if args.log_level:  # also for worker processes, which read the environment
        os.environ["COORDINATOR_LOG_LEVEL"] = args.log_level
        settings = Settings.from_env()
    try:
        with contextlib.ExitStack() as stack:
            if settings.redis_url is None:
                api_url = _local_url(args.host, args.port)
                url = stack.enter_context(_embedded_valkey(settings, api_url))
                settings = Settings.from_env({**os.environ, "COORDINATOR_REDIS_URL": url})
            elif not memory:
                asyncio.run(refuse_evicting(settings.redis_url, settings))
            _run_uvicorn(args, settings)
    except _Stop as stop:
        logger.info("stopped by %s", stop)
    return 0


@contextlib.contextmanager
def _embedded_valkey(settings: Settings, api_url: str) -> Iterator[str]:
    """Own the data folder, run its Valkey on the kept port, and publish both URLs there."""
    with DataDir(settings.data_dir).owned(api_url) as folder:
        embedded = EmbeddedValkey(settings.data_dir, folder.valkey_port(settings.valkey_port))
        embedded.start()
        try:
            folder.keep_port(embedded.port)
            server = RunningServer(os.getpid(), api_url, embedded.url, settings.key_prefix)
            with folder.published(server):
                logger.info(
                    "embedded Valkey on %s, data in %s (direct workers use this URL; it is"
                    " kept across restarts)",
                    embedded.url,
                    settings.data_dir.resolve(),
                )
                yield embedded.url
        finally:
            embedded.stop()
            logger.info("embedded Valkey stopped")


def _run_uvicorn(args: argparse.Namespace, settings: Settings) -> None:
    """Run the API until it is stopped: in this process, or in `--workers` processes."""
    import uvicorn  # noqa: PLC0415 - only the server needs it

    if args.workers == 1:
        from coordinator.app import create_app  # noqa: PLC0415

        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=settings.log_level,
            access_log=False,  # coordinator.logs writes one JSON line per request
            proxy_headers=True,
        )
        return
    # Worker processes import the factory and read the URL from the environment.
    os.environ["COORDINATOR_REDIS_URL"] = str(settings.redis_url)
    # ... and PROMETHEUS_MULTIPROC_DIR, where they keep the counters /metrics sums.
    from coordinator.metrics import multiprocess_directory  # noqa: PLC0415

    with multiprocess_directory(args.workers):
        uvicorn.run(
            "coordinator.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level,
            access_log=False,  # coordinator.logs writes one JSON line per request
            proxy_headers=True,
        )


def _local_url(host: str, port: int) -> str:
    """The API's URL for a client on this machine, when it is bound to `host`."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `coordinator` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` belongs to `coordinator run`'s command, never to our parser.
    command_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command_args = argv[:at], argv[at + 1 :]
    args = _parser().parse_args(argv)
    args.command_args = command_args or getattr(args, "command_rest", [])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    # httpx logs every request at INFO: that would break the one-line error contract.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "serve":
            return serve(args, Settings.from_env())
        if args.command == "token":
            token, line = new_token(args.role, args.processes)
            print(f"token: {token}")
            print(f"(shown once: give it to the {args.role}; the service keeps only its hash)")
            print(f"add this line to COORDINATOR_TOKENS_FILE:\n{line}")
            return 0
        return client_command(args)
    except (ConfigError, EmbeddedError) as error:
        print(f"coordinator: {error}", file=sys.stderr)
        return 2
    except CoordinatorError as error:
        print(f"coordinator: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
