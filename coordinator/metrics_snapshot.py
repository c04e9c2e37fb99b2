"""The figures /metrics serves: one snapshot of every process, kept small, stored as one value.

A snapshot holds totals over every registered process and the figures of a bounded few: the
`limit` busiest (most keys under a live lease, then the most recent grant by fencing token;
ties by name) and the processes an operator named. It is written to Redis as one compact JSON
string, so every worker of a `serve` and every replica answers a scrape with one GET and the
same figures (coordinator.metrics_refresh builds it). Each figure is declared once, in
FIGURES: the per-process gauge and its total over all processes both derive from it.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from coordinator.stats import ProcessStats

# Bumped when the stored shape changes; a snapshot of another version is ignored (the next
# refresh replaces it), so replicas of two versions side by side never misread each other.
VERSION = 3
_FIELDS = tuple(f.name for f in dataclasses.fields(ProcessStats))


@dataclass(frozen=True, slots=True)
class Figure:
    """One per-process gauge, `coordinator_process_<suffix>`, and (when `summed`) its total
    over every process, `coordinator_processes_<suffix>`. A value of None: no sample for
    that process."""

    suffix: str
    help: str
    value: Callable[[ProcessStats], float | None]
    summed: bool = True


FIGURES = (
    Figure("key_set_size", "Keys of the process (key_set_size).", lambda s: s.key_set_size),
    Figure("keys_held", "Keys under a lease that has not expired.", lambda s: s.held),
    Figure(
        "keys_free",
        "Keys a grant could hand out now: state free (expired leases and ended backoffs"
        " included; done, backing-off and quarantined keys are not).",
        lambda s: s.free,
    ),
    Figure(
        "keys_never_completed",
        "Free keys never released as completed (expired leases not yet reclaimed are not counted).",
        lambda s: s.never_completed,
    ),
    Figure(
        "leases_expired_unreclaimed",
        "Leases past their expiry that no grant has returned to the free set yet (grants"
        " reclaim up to 16 each; coordinator_expiries_reclaimed_total counts them as they"
        " are); the gauge to watch for abandoned work.",
        lambda s: s.expired,
    ),
    Figure(
        "pass",
        "The process's current pass (batch runs), from 1.",
        lambda s: s.pass_number,
        summed=False,
    ),
    # A timestamp rather than an age, so an alert compares it with time() at its own
    # evaluation, however old the snapshot; a sum of timestamps means nothing.
    Figure(
        "pass_started_timestamp_seconds",
        "Unix time the current pass started: the first at registration, each next one when"
        " started (`once`) or the instant the last completed (`rotate`).",
        lambda s: s.pass_started_us / 1e6 if s.pass_started_us else None,
        summed=False,
    ),
    Figure(
        "pass_complete",
        "1 once every key of the current pass is done or quarantined (a `once` pass, until"
        " the next is started; a `rotate` process starts the next at once), else 0.",
        lambda s: int(s.pass_complete),
    ),
    Figure(
        "pass_failed",
        "1 while the current `once` pass is failed: more keys were quarantined than its"
        " max_failed_keys (until a retry reopens it or the next pass starts), else 0.",
        lambda s: int(s.pass_failed),
    ),
    Figure("keys_done", "Keys completed at least once in the current pass.", lambda s: s.keys_done),
    Figure(
        "keys_quarantined",
        "Keys quarantined after max_attempts failed leases in a row.",
        lambda s: s.quarantined,
    ),
    Figure(
        "keys_in_backoff",
        "Keys held back after a failed lease whose retry_at has not yet come (state backoff).",
        lambda s: s.in_backoff,
    ),
)
_SUMMED = tuple(f for f in FIGURES if f.summed)
STALEST = "stalest_completion_age_seconds"
OLDEST_INCOMPLETE = "oldest_incomplete_pass_started_timestamp_seconds"
_STALEST_HELP = (
    "Seconds since the oldest last_completed_at among the process's free keys that have"
    " completed, when the snapshot was taken (keys never completed are not in it: see"
    " coordinator_process_keys_never_completed). Absent while none has completed."
)


def busyness(stats: ProcessStats) -> tuple[int, int]:
    """How a process ranks for series of its own: live leases, then its latest grant."""
    return stats.held, stats.last_token


@dataclass(slots=True)
class Snapshot:
    """Totals over every process and the figures of the chosen few, as of `taken_us`."""

    sequence: int = 0  # refreshes so far (1 for the first), across every API process
    taken_us: int = 0  # when the refresh ended, microseconds since the epoch
    refresh_seconds: float = 0.0  # how long the refresh took
    processes: int = 0
    totals: dict[str, int] = field(default_factory=lambda: {f.suffix: 0 for f in _SUMMED})
    stalest_age_max: float | None = None
    oldest_incomplete_pass_us: int | None = None  # the earliest start of a pass not complete
    shown: list[ProcessStats] = field(default_factory=list)

    def encode(self) -> bytes:
        """The snapshot as stored in Redis: compact JSON, each process one array."""
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        doc["shown"] = [dataclasses.astuple(s) for s in self.shown]
        doc["version"] = VERSION
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, raw: bytes | str | None) -> Snapshot | None:
        """A stored snapshot; None if there is none yet (or it is of another version, or
        unreadable: the next refresh replaces it)."""
        if raw is None:
            return None
        try:
            doc: dict[str, Any] = orjson.loads(raw)
            if not isinstance(doc, dict) or doc.pop("version", None) != VERSION:
                return None
            doc["shown"] = [
                ProcessStats(**dict(zip(_FIELDS, row, strict=True))) for row in doc["shown"]
            ]
            return cls(**doc)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


class SnapshotBuilder:
    """Folds pages of figures into a Snapshot, holding only `limit` + named processes."""

    def __init__(self, limit: int, named: Iterable[str] = ()) -> None:
        self.limit = limit
        self.named = frozenset(named)
        self.snapshot = Snapshot()
        self._busiest: list[ProcessStats] = []
        self._named: list[ProcessStats] = []

    def add(self, page: list[ProcessStats]) -> None:
        """Count one page into the totals and keep its processes that rank."""
        snapshot = self.snapshot
        snapshot.processes += len(page)
        for f in _SUMMED:
            snapshot.totals[f.suffix] += sum(int(f.value(s) or 0) for s in page)
        ages = [age for s in page if (age := s.stalest_age_seconds) is not None]
        if ages:
            snapshot.stalest_age_max = max([*ages, snapshot.stalest_age_max or 0.0])
        starts = [s.pass_started_us for s in page if s.pass_started_us and not s.pass_complete]
        if snapshot.oldest_incomplete_pass_us is not None:
            starts.append(snapshot.oldest_incomplete_pass_us)
        if starts:
            snapshot.oldest_incomplete_pass_us = min(starts)
        self._named.extend(s for s in page if s.process_name in self.named)
        others = [s for s in page if s.process_name not in self.named]
        # nlargest keeps the first of equals: pages come in name order, so ties go by name.
        self._busiest = heapq.nlargest(self.limit, self._busiest + others, key=busyness)

    def build(self, sequence: int, taken_us: int, refresh_seconds: float) -> Snapshot:
        """The finished snapshot, its processes in name order."""
        snapshot = self.snapshot
        snapshot.shown = sorted(self._busiest + self._named, key=lambda s: s.process_name)
        snapshot.sequence = sequence
        snapshot.taken_us = taken_us
        snapshot.refresh_seconds = refresh_seconds
        return snapshot


class LiveGauges:
    """What changes with every scrape: whether Redis answered, and the snapshot's age."""

    def __init__(self, snapshot: Snapshot | None, *, store_up: bool, now_us: int) -> None:
        self.snapshot = snapshot
        self.store_up = store_up
        self.now_us = now_us

    def collect(self) -> Iterable[Metric]:
        """coordinator_store_up, and the snapshot's age when there is one."""
        yield GaugeMetricFamily(
            "coordinator_store_up",
            "1 if this scrape read the metrics snapshot from Redis, 0 if Redis failed (the"
            " coordinator_process_* figures and their totals are then missing).",
            value=1 if self.store_up else 0,
        )
        if self.snapshot is not None:
            yield GaugeMetricFamily(
                "coordinator_metrics_snapshot_age_seconds",
                "Seconds since the per-process figures and totals served here were read from"
                " Redis (refreshed in the background; see COORDINATOR_METRICS_REFRESH_SECONDS).",
                value=max(0.0, (self.now_us - self.snapshot.taken_us) / 1e6),
            )


class FiguresText:
    """A snapshot's figures in text format, made once per snapshot and viewer scope: scrapes
    between two refreshes only add their LiveGauges (a thousand series take about 3 ms)."""

    # Scopes kept per snapshot: the token lines' process lists (and None: every process).
    SCOPES = 64

    def __init__(self) -> None:
        self._snapshot: tuple[int, int] | None = None
        self._texts: dict[tuple[str, ...] | None, bytes] = {}

    def text(
        self, snapshot: Snapshot, scope: tuple[str, ...] | None, may_see: Callable[[str], bool]
    ) -> bytes:
        """The figures a viewer covering `scope` (None: all, totals included) may see."""
        key = (snapshot.sequence, snapshot.taken_us)
        if key != self._snapshot or len(self._texts) >= self.SCOPES:
            self._snapshot, self._texts = key, {}
        made = self._texts.get(scope)
        if made is None:
            collector = SnapshotCollector(snapshot, may_see=None if scope is None else may_see)
            made = self._texts[scope] = generate_latest(collector)
        return made


class SnapshotCollector:
    """The figures of one snapshot as a prometheus-client collector, for one viewer."""

    def __init__(self, snapshot: Snapshot, *, may_see: Callable[[str], bool] | None = None) -> None:
        self.snapshot = snapshot
        # None: the viewer sees everything, totals included; else only the processes it
        # covers (totals would tell it about the others).
        self.may_see = may_see

    def collect(self) -> Iterable[Metric]:
        """The refresh's figures, the chosen processes' gauges and the totals."""
        snapshot = self.snapshot
        yield CounterMetricFamily(
            "coordinator_metrics_refreshes",
            "Refreshes of the metrics snapshot, by every API process sharing this Redis.",
            value=snapshot.sequence,
        )
        yield GaugeMetricFamily(
            "coordinator_metrics_refresh_duration_seconds",
            "Seconds the last refresh of the metrics snapshot took (reading every process).",
            value=snapshot.refresh_seconds,
        )
        shown = snapshot.shown
        if self.may_see is not None:
            shown = [s for s in shown if self.may_see(s.process_name)]
        for f in FIGURES:
            family = GaugeMetricFamily(
                f"coordinator_process_{f.suffix}", f.help, labels=["process"]
            )
            for s in shown:
                if (figure := f.value(s)) is not None:
                    family.add_metric([s.process_name], figure)
            yield family
        stalest = GaugeMetricFamily(
            f"coordinator_process_{STALEST}", _STALEST_HELP, labels=["process"]
        )
        for s in shown:
            if (age := s.stalest_age_seconds) is not None:
                stalest.add_metric([s.process_name], age)
        yield stalest
        if self.may_see is not None:
            return
        yield GaugeMetricFamily(
            "coordinator_processes", "Registered processes.", value=snapshot.processes
        )
        for f in _SUMMED:
            yield GaugeMetricFamily(
                f"coordinator_processes_{f.suffix}",
                f"Summed over every registered process: {f.help[0].lower()}{f.help[1:]}",
                value=snapshot.totals[f.suffix],
            )
        if snapshot.stalest_age_max is not None:
            yield GaugeMetricFamily(
                f"coordinator_processes_{STALEST}",
                "The largest coordinator_process_stalest_completion_age_seconds over every"
                " registered process.",
                value=snapshot.stalest_age_max,
            )
        if snapshot.oldest_incomplete_pass_us is not None:
            yield GaugeMetricFamily(
                f"coordinator_processes_{OLDEST_INCOMPLETE}",
                "The earliest coordinator_process_pass_started_timestamp_seconds among the"
                " registered processes whose pass is not complete (the pass most overdue).",
                value=snapshot.oldest_incomplete_pass_us / 1e6,
            )
