"""CPU seconds and peak memory of each process taking part, per phase (psutil).

The stack's processes come from ``Stack.status()`` rows (component, pid); the
gateway's nginx counts with its worker processes. The bench's own processes (the
sender, the receivers) are measured too, so a reader can see when the measuring
client, not the system, was the busy one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import psutil

from labkit.procstats import cpu_seconds, family as _family

__all__ = ["ResourceSampler"]

SAMPLE_INTERVAL_S = 0.1
OTHERS = "other processes"  # the rest of the machine: tells whether something else was busy


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class ResourceSampler:
    """Samples RSS every 0.1 s in a thread; ``begin()`` and ``end()`` bracket one phase."""

    def __init__(self, components: dict[str, int], alone: Iterable[str] = ()) -> None:
        # Components in `alone` are measured without their children (the bench's own process has the stack's).
        self.components: dict[str, list[psutil.Process]] = {
            name: [psutil.Process(pid)] if name in alone else _family(pid) for name, pid in components.items()
        }
        self._lock = threading.Lock()
        self._peak: dict[str, int] = {}
        self._cpu_at_begin: dict[str, float] = {}
        self._busy_at_begin = 0.0
        self._began = 0.0
        self._stop = threading.Event()
        self.timeline: list[tuple[float, int, dict[str, dict[str, float]]]] = []

    @classmethod
    def for_stack(cls, status_rows: Iterable[dict], bench_pid: int) -> ResourceSampler:
        components = {row["component"]: row["pid"] for row in status_rows if row.get("pid")}
        components["bench sender"] = bench_pid
        return cls(components, alone=["bench sender"])

    def set_processes(self, name: str, pids: list[int]) -> None:
        """Measure these processes as one component (e.g. the receivers of the next phase)."""
        family = [proc for pid in pids for proc in _family(pid)]
        with self._lock:
            self.components[name] = family

    def forget(self, name: str) -> None:
        with self._lock:
            self.components.pop(name, None)

    def _processes(self, name: str) -> list[psutil.Process]:
        return self.components.get(name, [])

    def _cpu_seconds(self, name: str) -> float:
        return cpu_seconds(self._processes(name))

    def _rss(self, name: str) -> int:
        total = 0
        for proc in self._processes(name):
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            with self._lock:
                for name in list(self.components):
                    self._peak[name] = max(self._peak.get(name, 0), self._rss(name))

    def start(self) -> ResourceSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-resources", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def elapsed(self) -> float:
        return time.monotonic() - self._began

    def mark(self, sent: int) -> None:
        """Add to :attr:`timeline` where the phase stands: seconds since ``begin()``, events sent, each component's
        CPU seconds since ``begin()`` and resident MB now (an endurance window's end, a soak's memory sample)."""
        with self._lock:
            figures = {name: {"cpu_s": round(self._cpu_seconds(name) - self._cpu_at_begin.get(name, 0.0), 3),
                              "rss_mb": round(self._rss(name) / 2**20, 1)} for name in self.components}
            self.timeline.append((round(time.monotonic() - self._began, 2), sent, figures))

    def begin(self) -> None:
        with self._lock:
            self.timeline = []
            self._peak = {name: self._rss(name) for name in self.components}
            self._cpu_at_begin = {name: self._cpu_seconds(name) for name in self.components}
            self._busy_at_begin = _machine_busy_s()
            self._began = time.monotonic()

    def end(self) -> tuple[float, dict[str, dict[str, float]]]:
        """Seconds since ``begin()``, and per component the CPU seconds used and the peak RSS in MB.

        ``other processes`` is the machine's busy CPU time that none of the components used.
        """
        with self._lock:
            elapsed = time.monotonic() - self._began
            figures = {}
            for name in self.components:
                peak = max(self._peak.get(name, 0), self._rss(name))
                cpu = self._cpu_seconds(name) - self._cpu_at_begin.get(name, 0.0)
                figures[name] = {"cpu_s": round(max(cpu, 0.0), 3), "peak_rss_mb": round(peak / 2**20, 1)}
            others = _machine_busy_s() - self._busy_at_begin - sum(f["cpu_s"] for f in figures.values())
            figures[OTHERS] = {"cpu_s": round(max(others, 0.0), 3), "peak_rss_mb": 0.0}
            return elapsed, figures
