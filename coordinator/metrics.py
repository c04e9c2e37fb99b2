"""Prometheus metrics: request and operation counters, and per-process figures from Redis.

Counters and the latency histogram are counted by a pure ASGI middleware, from the matched
route's template and the response status, so handlers and the store are untouched. With
several worker processes (`coordinator serve --workers N`) every process writes them to files
in PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode) and `/metrics` sums the
files, so whichever worker answers, each request is counted exactly once.

The per-process figures (keys held and free, expired leases, the stalest completion) and
their totals over every process are not read when scraped: one API process at a time reads
them in the background (`coordinator.metrics_refresh`) into one snapshot stored in Redis,
and a scrape reads that with one GET (`coordinator.metrics_snapshot`), so every worker and
replica answers the same figures, never summed across workers.

With API tokens configured `/metrics` needs one (admin or worker; a token limited to some
processes sees only their figures), from every client: a client's address is no credential,
since behind a proxy it is whatever `X-Forwarded-For` says. Only the open API (no tokens)
answers loopback clients without one.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator import validation
from coordinator.auth import Forbidden, Principal, TokenTable
from coordinator.config import Settings
from coordinator.metrics_refresh import FIRST_WAIT_SECONDS, MetricsRefresher
from coordinator.metrics_snapshot import FiguresText, LiveGauges, Snapshot
from coordinator.problems import PROBLEM_SCOPE_KEY
from coordinator.store import Store

logger = logging.getLogger("coordinator")

# No `*_created` series: the multiprocess mode has none, so both modes print the same names.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format every Prometheus version reads (what generate_latest writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PATH = "/metrics"
UNMATCHED = "unmatched"
# Up to 60 s: a grant may wait that long for a key (`wait_seconds`).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Anything else a client sends is counted as "other": labels stay a bounded set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_BATCH_KEYS = "/api/v1/process/batch_keys"
_LEASE = _BATCH_KEYS + "/{external_id}"
# (method, route template) -> operation; its outcome comes from the status.
OPERATIONS = {
    ("POST", _BATCH_KEYS): "grant",
    ("PATCH", _LEASE): "renew",
    ("DELETE", _LEASE): "release",
}
_SUCCESS = {"grant": 201, "renew": 200, "release": 200}
_FAILURES = {
    401: "unauthorized",
    403: "forbidden",
    409: "no_free_key",  # unless the problem's code says which other 409 it is
    410: "lease_gone",
    503: "store_unavailable",
}
# A grant's 409s, each its own outcome: a `once` pass that is complete (or failed), or every
# key quarantined, is not a shortage of keys (alerts on no_free_key must not fire for them).
GRANT_CONFLICTS = ("no_free_key", "pass_complete", "pass_failed", "all_quarantined")
OUTCOMES = {
    "grant": ("granted", *GRANT_CONFLICTS, "unknown_process"),
    "renew": ("renewed", "unknown_lease", "lease_gone"),
    "release": (*validation.OUTCOMES, "unknown_lease", "lease_gone"),
}


def multiprocess() -> bool:
    """Whether counters live in PROMETHEUS_MULTIPROC_DIR (prometheus-client decides it so)."""
    return bool(os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()))


def _outcome(operation: str, status: int, query_string: bytes, problem: str | None) -> str:
    if status == _SUCCESS[operation]:
        if operation == "grant":
            return "granted"
        if operation == "renew":
            return "renewed"
        # A 200 means the outcome parameter was valid; Starlette reads its last value.
        query = query_string.decode("latin-1") if query_string else ""
        outcomes = [v for k, v in parse_qsl(query) if k == "outcome"]
        return outcomes[-1] if outcomes else "completed"
    if status == 404:
        return "unknown_process" if operation == "grant" else "unknown_lease"
    if status == 409 and operation == "grant" and problem in GRANT_CONFLICTS:
        return str(problem)
    return _FAILURES.get(status, "error" if status >= 500 else "rejected")


class Metrics:
    """The counters of one app; in multiprocess mode their values live in the shared files."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        # The per-process figures' refresher, while the app's lifespan runs.
        self.refresher: MetricsRefresher | None = None
        self.figures = FiguresText()
        self.multiprocess = multiprocess()
        self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "coordinator_http_requests",
            "HTTP requests answered, by method, route template and status.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "coordinator_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response (a grant's"
            " wait_seconds included), by method, route template and status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.operations = {
            "grant": Counter(
                "coordinator_grants",
                "Grant requests (POST /api/v1/process/batch_keys) by outcome: granted,"
                " no_free_key, unknown_process, lease_gone (the request_id's lease has ended),"
                " unauthorized, forbidden, rejected (other 4xx), store_unavailable, error.",
                ["outcome"],
                registry=self.registry,
            ),
            "renew": Counter(
                "coordinator_renewals",
                "Renewals (PATCH .../batch_keys/{external_id}) by outcome: renewed,"
                " unknown_lease, lease_gone, unauthorized, forbidden, rejected,"
                " store_unavailable, error.",
                ["outcome"],
                registry=self.registry,
            ),
            "release": Counter(
                "coordinator_releases",
                "Releases (DELETE .../batch_keys/{external_id}) by outcome: "
                + ", ".join(validation.OUTCOMES)
                + ", unknown_lease, lease_gone, unauthorized, forbidden, rejected,"
                " store_unavailable, error.",
                ["outcome"],
                registry=self.registry,
            ),
        }
        self.expiries_reclaimed = Counter(
            "coordinator_expiries_reclaimed",
            "Expired leases that grants returned to the free set (a renew or release that"
            " finds its own lease expired returns it too, counted as lease_gone there).",
            registry=self.registry,
        )
        self.no_free_key = Counter(
            "coordinator_no_free_key",
            "Grants answered 409 no_free_key (after waiting, if they asked to wait).",
            registry=self.registry,
        )
        # The usual outcomes show as 0 from the start, so rate() sees their first increase.
        for operation, outcomes in OUTCOMES.items():
            for outcome in outcomes:
                self.operations[operation].labels(outcome)
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        # The labelled children, looked up once: `labels()` per request is a lock and a dict.
        self._outcomes: dict[tuple[str, str], Counter] = {}

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        """Count one answered request (the middleware calls this)."""
        method = scope["method"] if scope["method"] in METHODS else "other"
        route = scope.get("route")
        template = getattr(route, "path", UNMATCHED) if route is not None else UNMATCHED
        key = (method, template, status)
        series = self._series.get(key)
        if series is None:
            # Bounded: the routes, the methods above, and the statuses the app answers.
            series = self._series[key] = (
                self.requests.labels(method, template, str(status)),
                self.latency.labels(method, template, str(status)),
            )
        series[0].inc()
        series[1].observe(seconds)
        operation = OPERATIONS.get((method, template))
        if operation is not None:
            outcome = _outcome(
                operation, status, scope.get("query_string", b""), scope.get(PROBLEM_SCOPE_KEY)
            )
            counter = self._outcomes.get((operation, outcome))
            if counter is None:  # bounded: OUTCOMES and the failure names above
                counter = self._outcomes[operation, outcome] = self.operations[operation].labels(
                    outcome
                )
            counter.inc()
            if outcome == "no_free_key":
                self.no_free_key.inc()

    def start_refreshing(self, store: Store) -> None:
        """Refresh the per-process figures in the background (from the lifespan's start)."""
        settings = self.settings
        self.refresher = MetricsRefresher(
            store.redis,
            store.keys,
            interval_seconds=settings.metrics_refresh_seconds,
            limit=settings.metrics_processes_max,
            named=settings.metrics_processes or (),
        )
        self.refresher.start()

    async def stop_refreshing(self) -> None:
        """Stop the background refresh (at the lifespan's end)."""
        if self.refresher is not None:
            await self.refresher.aclose()
            self.refresher = None

    def exposition(self) -> bytes:
        """The counters in text format: this process's, or every worker's summed."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
        return generate_latest(merged)


class MetricsMiddleware:
    """Times and counts every HTTP request; labels come from the route Starlette matched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response starts becomes a 500 further out

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe(scope, status, time.perf_counter() - started)


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def _viewer(request: Request) -> Principal | None:
    """Who may scrape: with tokens, a valid one (else 401); open, loopback only (None sees
    everything), else 403."""
    tokens: TokenTable = request.state.tokens
    if tokens:
        # Checked before the address: a forwarded header can make any client look local.
        return tokens.authenticate(request.headers.get("authorization"))
    if _is_loopback(request):
        return None
    raise Forbidden(
        "Metrics are served to loopback clients only while no API tokens are configured."
    )


def install(app: Starlette, settings: Settings) -> Metrics:
    """Count every request of `app` and serve GET /metrics."""
    metrics = Metrics(settings)

    async def endpoint(request: Request) -> Response:
        viewer = _viewer(request)
        refresher = metrics.refresher
        snapshot: Snapshot | None = None
        store_up = True
        if refresher is not None:
            refresher.want()
            try:
                snapshot = await refresher.snapshot()
                if snapshot is None:
                    snapshot = await refresher.first_snapshot(FIRST_WAIT_SECONDS)
            except RedisError as error:
                logger.warning(
                    "metrics: the snapshot of per-process figures is unavailable: %s", error
                )
                store_up = False
        else:
            store_up = False  # outside the app's lifespan: no store to read
        live = LiveGauges(snapshot, store_up=store_up, now_us=int(time.time() * 1_000_000))
        body = metrics.exposition() + generate_latest(live)
        if snapshot is not None:
            # Admins and unscoped workers share one text; a scoped token sees only its own.
            scope = None if viewer is None else viewer.processes
            may_see = (lambda _: True) if viewer is None else viewer.may_act_on
            body += metrics.figures.text(snapshot, scope, may_see)
        return Response(body, media_type=CONTENT_TYPE)

    # First, so no catch-all route added later can shadow it.
    app.router.routes.insert(0, Route(PATH, endpoint, methods=["GET"]))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics


@contextmanager
def multiprocess_directory(workers: int) -> Iterator[None]:
    """For `serve --workers N`: a fresh PROMETHEUS_MULTIPROC_DIR the workers inherit, removed
    at exit. A directory the operator set is used as is (it should be empty at start)."""
    if workers < 2 or multiprocess():
        yield
        return
    path = tempfile.mkdtemp(prefix="coordinator-metrics-")
    os.environ[MULTIPROC_ENV] = path
    logger.info("metrics of the %d worker processes are summed from %s", workers, path)
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
