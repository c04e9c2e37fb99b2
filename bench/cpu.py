"""CPU accounting for the benchmark: who used how much of the machine during a window.

Each side is a process tree (a server with its workers, Valkey, this process); its CPU is
utime + stime of every process in the tree (psutil reads /proc/<pid>/stat). The machine's own
busy time (/proc/stat) minus every side is what other processes took meanwhile: on a shared
machine that is the noise to read the figures against.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its living descendants.

    A negative `pid` stands for that process alone (this benchmark's own process, whose
    children are the servers and Valkey, each counted as a side of its own).
    """
    try:
        root = psutil.Process(abs(pid))
        procs = [root] if pid < 0 else [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat, summed over cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuWindow:
    """CPU seconds each side used between `start()` and `stop()`; `extra` adds reaped children."""

    sides: dict[str, int]
    wall: float = 0.0
    used: dict[str, float] = field(default_factory=dict)
    machine: float = 0.0
    _start: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0
    _m0: float = 0.0

    def start(self) -> CpuWindow:
        """Take the first reading."""
        self._start = {name: tree_cpu_seconds(pid) for name, pid in self.sides.items()}
        self._m0 = machine_busy_seconds()
        self._t0 = time.perf_counter()
        return self

    def stop(self, extra: dict[str, float] | None = None) -> CpuWindow:
        """Take the second reading; `extra` holds sides measured otherwise (wrk's rusage)."""
        self.wall = time.perf_counter() - self._t0
        self.machine = machine_busy_seconds() - self._m0
        self.used = {
            name: tree_cpu_seconds(pid) - self._start[name] for name, pid in self.sides.items()
        }
        self.used.update(extra or {})
        return self

    @property
    def other(self) -> float:
        """CPU seconds that processes outside every side took during the window."""
        return max(0.0, self.machine - sum(self.used.values()))

    def to_json(self) -> dict[str, object]:
        """Seconds and share of one core for each side, and the rest of the machine."""
        cores = {name: round(sec / self.wall, 2) for name, sec in self.used.items()}
        return {
            "wall_seconds": round(self.wall, 2),
            "cpu_seconds": {name: round(sec, 2) for name, sec in self.used.items()},
            "cores": cores,
            "other_processes_cpu_seconds": round(self.other, 2),
            "other_processes_cores": round(self.other / self.wall, 2),
            "machine_busy_cores": round(self.machine / self.wall, 2),
        }

    @staticmethod
    def merge(windows: list[CpuWindow]) -> dict[str, object]:
        """Several windows of the same sides as one."""
        wall = sum(w.wall for w in windows)
        used: dict[str, float] = {}
        for window in windows:
            for name, sec in window.used.items():
                used[name] = used.get(name, 0.0) + sec
        merged = CpuWindow(sides={}, wall=wall, used=used)
        merged.machine = sum(w.machine for w in windows)
        return merged.to_json()
