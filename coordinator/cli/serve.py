"""`coordinator serve`: the HTTP API, on the configured Redis or on a private Valkey."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import logging
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from coordinator.auth import load_tokens
from coordinator.cli import listen
from coordinator.config import ConfigError, Settings
from coordinator.connection import MEMORY_URL, connect
from coordinator.datadir import DataDir, RunningServer
from coordinator.embedded import EmbeddedValkey
from coordinator.eviction import refuse_evicting

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

logger = logging.getLogger("coordinator")


class _Stop(Exception):
    """SIGTERM or SIGINT, after uvicorn's graceful shutdown re-raised it."""


def _stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve(args: argparse.Namespace) -> int:
    """Check every setting, then serve the API until SIGTERM or SIGINT."""
    if args.log_level:  # also for worker processes, which read the environment
        os.environ["COORDINATOR_LOG_LEVEL"] = args.log_level
    settings = Settings.from_env()
    address = listen.address(args.host, args.port)
    if not load_tokens(settings) and not address.is_loopback and not args.insecure_open:
        raise ConfigError(
            f"no API tokens are configured, so listening on {address.host} would open the API"
            " to the network: set COORDINATOR_TOKENS_FILE (see `coordinator token create`),"
            " listen on 127.0.0.1, or pass --insecure-open"
        )
    memory = settings.redis_url is not None and settings.redis_url.startswith(MEMORY_URL)
    if memory and args.workers > 1:
        raise ConfigError("memory:// keeps state inside one process: use --workers 1")
    if memory:
        asyncio.run(_check_connects(settings))  # memory:// without fakeredis: one line
    # uvicorn re-raises the stopping signal once it has shut down; with the default handler
    # that would kill this process before the embedded Valkey is stopped.
    for stopping in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stopping, _stop)
    try:
        with contextlib.ExitStack() as stack:
            if settings.redis_url is None:
                url = stack.enter_context(_embedded_valkey(settings, address))
                settings = Settings.from_env({**os.environ, "COORDINATOR_REDIS_URL": url})
            else:
                listen.ensure_free(address)
                if not memory:
                    asyncio.run(refuse_evicting(settings.redis_url, settings))
            _run_uvicorn(address, args.workers, settings)
    except _Stop as stop:
        logger.info("stopped by %s", stop)
    return 0


async def _check_connects(settings: Settings) -> None:
    """Build (not use) the Redis client the app will build, so a ConfigError comes now."""
    assert settings.redis_url is not None
    await connect(settings.redis_url, settings).aclose()


@contextlib.contextmanager
def _embedded_valkey(settings: Settings, address: listen.Address) -> Iterator[str]:
    """Own the data folder, run its Valkey on the kept port, and publish both URLs there."""
    with DataDir(settings.data_dir).owned(address.local_url) as folder:
        # After the folder (a second server on it is named as such), before Valkey starts.
        listen.ensure_free(address)
        embedded = EmbeddedValkey(
            settings.data_dir,
            folder.valkey_port(settings.valkey_port),
            password=folder.valkey_password(),  # a local user reaching the port gets NOAUTH
        )
        embedded.start()
        try:
            folder.keep_port(embedded.port)
            server = RunningServer(
                os.getpid(), address.local_url, embedded.url, settings.key_prefix
            )
            with folder.published(server):
                logger.info(
                    "embedded Valkey on %s, password in %s, data in %s (`--direct` workers of"
                    " this user read the URL with its password from %s; both are kept across"
                    " restarts)",
                    embedded.logged_url,
                    folder.password_file.resolve(),
                    settings.data_dir.resolve(),
                    folder.server_file.resolve(),
                )
                yield embedded.url
        finally:
            embedded.stop()
            logger.info("embedded Valkey stopped")


def http_stack() -> str:
    """The event loop and HTTP parser uvicorn's "auto" picks here: uvloop and httptools when
    installed (uvicorn[standard], a dependency), else asyncio and h11."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop} event loop, {parser} HTTP parser"


# Container allocations between two collections of the youngest generation (CPython: 700).
GC_THRESHOLD = 7000


def settle_gc() -> None:
    """Ready the garbage collector for a server that builds many short-lived objects per request.

    Everything alive now (modules, routes, the app) is moved out of the collector's sight
    (`gc.freeze`), so collections stop walking it, and the youngest generation is collected
    every 7,000 allocations instead of 700. Objects freed by reference counting, nearly all of
    a request's, are unaffected. Measured with `make bench`'s load: about 10 % less server
    CPU per grant + release cycle.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)


# How long requests still in flight at SIGTERM may run before uvicorn cancels them (a script
# call ends within COORDINATOR_REDIS_TIMEOUT_SECONDS anyway; this bounds long listings). With
# the lifespan's end after it, a stop takes at most SHUTDOWN_BOUND_SECONDS (README "Stopping").
GRACEFUL_SHUTDOWN_SECONDS = 5
SHUTDOWN_BOUND_SECONDS = 10
# The exit status of a server that could not start (uvicorn.run's own).
STARTUP_FAILURE = 3


def worker_app() -> Starlette:
    """The app of one `serve --workers N` process (uvicorn calls this factory in each)."""
    from coordinator.app import create_app  # noqa: PLC0415

    app = create_app()
    settle_gc()
    return stop_waiting_at_signals(app)


def stop_waiting_at_signals(app: Starlette) -> Starlette:
    """Have SIGTERM and SIGINT answer `app`'s waiting grants and pass waits at once, before
    uvicorn's own handling (stop accepting, wait for open requests, then the lifespan's end).

    Called as uvicorn loads the app, which is after it installed its signal handlers and inside
    its loop, so this chains onto them (and uvicorn's restoring its predecessors drops it).
    """
    from coordinator.app import stop_waiting  # noqa: PLC0415

    if threading.current_thread() is not threading.main_thread():
        return app  # uvicorn run in a thread handles no signals either
    loop = asyncio.get_running_loop()
    for stopping in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(stopping)

        def chained(signum: int, frame: FrameType | None, previous: object = previous) -> None:
            # A signal handler may run in the middle of the loop's own code: hand over.
            loop.call_soon_threadsafe(stop_waiting, app)
            if callable(previous):
                previous(signum, frame)

        signal.signal(stopping, chained)
    return app


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """The one socket `--workers N` processes accept from, bound as uvicorn.run binds it, with
    TCP_NODELAY on: on Linux an accepted connection takes it from the listening socket, and
    without it a small answer may wait for the client's delayed ACK (Nagle), which made two
    workers slower than one."""
    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _run_uvicorn(address: listen.Address, workers: int, settings: Settings) -> None:
    """Run the API until it is stopped: in this process, or in `workers` processes."""
    import uvicorn  # noqa: PLC0415 - only the server needs it
    from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

    from coordinator import http_limits  # noqa: PLC0415 - imports uvicorn's protocols

    logger.info("HTTP on %s", http_stack())
    # Raised before the workers start: they inherit it.
    open_files = http_limits.raise_open_files_limit()
    max_connections = http_limits.connection_bound(
        settings.max_connections, open_files, settings.redis_max_connections
    )
    logger.info(
        "open files limit %s; at most %d HTTP connections per process, request heads up to"
        " %d bytes within %g s",
        "unlimited" if open_files == resource.RLIM_INFINITY else open_files,
        max_connections,
        http_limits.MAX_HEAD_BYTES,
        http_limits.HEAD_TIMEOUT_SECONDS,
    )
    common: dict[str, Any] = {
        "factory": True,
        "host": address.host,
        "port": address.port,
        "log_level": settings.log_level,
        "access_log": False,  # coordinator.logs writes one JSON line per request
        "proxy_headers": True,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "max_connections": max_connections,
    }

    if workers == 1:
        from coordinator.app import create_app  # noqa: PLC0415

        app = create_app(settings)
        settle_gc()

        server = uvicorn.Server(
            # A factory: called once the signal handlers are in.
            http_limits.LimitedConfig(lambda: stop_waiting_at_signals(app), **common)
        )
        server.run()
        if not server.started:
            sys.exit(STARTUP_FAILURE)
        return
    # Worker processes import the factory and read the URL from the environment.
    os.environ["COORDINATOR_REDIS_URL"] = str(settings.redis_url)
    # ... and PROMETHEUS_MULTIPROC_DIR, where they keep the counters /metrics sums.
    from coordinator.metrics import multiprocess_directory  # noqa: PLC0415

    with multiprocess_directory(workers):
        config = http_limits.LimitedConfig(
            "coordinator.cli.serve:worker_app", workers=workers, **common
        )
        sock = listening_socket(config)
        Multiprocess(config, sockets=[sock]).run()
