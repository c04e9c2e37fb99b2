"""Every Redis key name the coordinator uses, built in this one place.

A process's keys share the hash tag ``{process_name}``, so each script touches one cluster
slot. The registry of names lives under its own tag.
"""

from __future__ import annotations

from dataclasses import dataclass

# The KEYS each script takes, in its order (the header of each lua/*.lua says the same).
SCRIPT_KEYS: dict[str, tuple[str, ...]] = {
    "register": ("meta", "events"),
    "grant": (
        "meta",
        "free",
        "held",
        "leases",
        "tokens",
        "fence",
        "events",
        "keyinfo",
        "parked",
        "passes",
        "ended",
    ),
    "renew": ("free", "held", "leases", "tokens", "fence", "freed", "events", "keyinfo", "meta"),
    "release": (
        "free",
        "held",
        "leases",
        "tokens",
        "fence",
        "freed",
        "events",
        "meta",
        "keyinfo",
        "parked",
        "passes",
        "ended",
    ),
    "inspect": ("meta", "free", "leases", "keyinfo", "parked"),
    "unregister": (
        "meta",
        "free",
        "held",
        "leases",
        "tokens",
        "freed",
        "events",
        "keyinfo",
        "parked",
        "passes",
        "ended",
    ),
    "start_pass": ("meta", "free", "keyinfo", "parked", "passes", "events"),
    "retry_key": ("meta", "free", "keyinfo", "parked", "events"),
}

# The structures that grow with the key set or the leases: unregister.lua renames them to a
# deletion's doomed names (its KEYS 12-18, in this order), which the deleting caller then
# empties a chunk at a time. The sorted sets are emptied by rank, the hashes by HSCAN.
DOOMED_ZSETS = frozenset({"free", "held", "parked", "ended"})
DOOMED: tuple[str, ...] = ("free", "held", "leases", "tokens", "keyinfo", "parked", "ended")


@dataclass(frozen=True, slots=True)
class ProcessKeys:
    """The Redis keys of one process."""

    meta: str
    free: str
    held: str
    leases: str
    tokens: str
    fence: str
    freed: str
    events: str
    keyinfo: str
    parked: str
    passes: str
    ended: str
    """Request ids of ended leases -> when to forget them (a late duplicate grant's 410)."""

    def of(self, script: str) -> list[str]:
        """The KEYS of `script` for this process, in the script's order."""
        return [getattr(self, field) for field in SCRIPT_KEYS[script]]


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds key names under one configurable prefix."""

    prefix: str = "bpc"

    def process(self, name: str) -> ProcessKeys:
        """The keys of process `name` (a validated name: no braces can reach here)."""
        base = f"{self.prefix}:{{{name}}}:"
        return ProcessKeys(
            meta=base + "meta",
            free=base + "free",
            held=base + "held",
            leases=base + "leases",
            tokens=base + "tokens",
            fence=base + "fence",
            freed=base + "freed",
            events=base + "events",
            keyinfo=base + "keyinfo",
            parked=base + "parked",
            passes=base + "passes",
            ended=base + "ended",
        )

    def doomed(self, name: str, deletion: str) -> dict[str, str]:
        """Where one deletion of process `name` moves its DOOMED structures to drain them:
        unique to `deletion`, so a new registration of the name and a later delete never meet
        them, and under the same hash tag, so in the process's slot."""
        base = f"{self.prefix}:{{{name}}}:doomed:{deletion}:"
        return {structure: base + structure for structure in DOOMED}

    @property
    def registry(self) -> str:
        """Sorted set of registered names (all scores 0, so it orders by name)."""
        return f"{self.prefix}:{{registry}}:processes"

    def retired_id(self, pid: str) -> str:
        """String holding the name of a deleted process with this id, while its history stays
        (so its leases still answer 410, not 404); it expires with the history."""
        return f"{self.prefix}:{{registry}}:retired:{pid}"

    @property
    def process_ids(self) -> str:
        """Hash from a process id (see `lease_id`) to the name it was derived from."""
        return f"{self.prefix}:{{registry}}:pids"

    @property
    def metrics_snapshot(self) -> str:
        """String holding the last figures for GET /metrics (coordinator.metrics_snapshot)."""
        return f"{self.prefix}:{{registry}}:metrics"

    @property
    def metrics_refresher(self) -> str:
        """String naming the API process whose turn it is to refresh the metrics snapshot;
        it expires when the next turn may start (coordinator.metrics_refresh)."""
        return f"{self.prefix}:{{registry}}:metrics-refresher"
