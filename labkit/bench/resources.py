"""CPU seconds and peak memory of each process taking part, per phase (psutil, through :mod:`labkit.procstats`).

The stack's processes come from ``Stack.status()`` rows, each with its children (the gateway's nginx
workers), replicas and Kafka nodes added up under their kind (``consumer-2`` and ``broker-3`` count as
``consumer`` and ``broker``). The bench's own processes (the sender, the receivers) are measured too, so
a reader can see when the measuring client, not the system, was the busy one.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import psutil

from labkit.ops.stack import Stack
from labkit.procstats import cpu_seconds, family, rss

__all__ = ["ResourceSampler", "stack_processes"]

SAMPLE_INTERVAL_S = 0.1
OTHERS = "other processes"  # the rest of the machine: tells whether something else was busy


def _kind(component: str) -> str:
    """``broker-2`` -> ``broker``, ``consumer-1`` -> ``consumer``; other names as they are."""
    kind, _, number = component.rpartition("-")
    return kind if kind and number.isdigit() else component


def stack_processes(stack: Stack) -> dict[str, list[psutil.Process]]:
    """Each kind of component of the running stack: its processes, with their children."""
    found: dict[str, list[psutil.Process]] = defaultdict(list)
    for row in stack.status():
        if row["pid"]:
            found[_kind(row["component"])] += family(row["pid"])
    return dict(found)


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class ResourceSampler:
    """``begin()`` and ``end()`` bracket one phase: CPU seconds between them, peak RSS sampled every 0.1 s."""

    def __init__(self, stack: Stack, bench_pid: int, watcher_pids: list[int]) -> None:
        # The bench's own process is measured without its children (it started the stack); the phase's
        # receivers are measured as one component. Only the sampling thread writes the peaks.
        self.components = {**stack_processes(stack), "bench sender": [psutil.Process(bench_pid)],
                            "bench watchers": [proc for pid in watcher_pids for proc in family(pid)]}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak: dict[str, int] = {}
        self._cpu_at_begin: dict[str, float] = {}
        self._busy_at_begin = self._began = 0.0
        self.timeline: list[tuple[float, int, dict[str, dict[str, float]]]] = []

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            for name, procs in self.components.items():
                self._peak[name] = max(self._peak.get(name, 0), rss(procs))

    def stop(self) -> None:
        """Stop sampling (a phase that failed before its end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def elapsed(self) -> float:
        return time.monotonic() - self._began

    def _cpu(self, name: str) -> float:
        return round(max(cpu_seconds(self.components[name]) - self._cpu_at_begin.get(name, 0.0), 0.0), 3)

    def mark(self, sent: int) -> None:
        """Add to :attr:`timeline` where the phase stands: seconds since ``begin()``, events sent, each component's
        CPU seconds since ``begin()`` and resident MB now (an endurance window's end, a soak's memory sample)."""
        figures = {name: {"cpu_s": self._cpu(name), "rss_mb": round(rss(procs) / 2**20, 1)}
                   for name, procs in self.components.items()}
        self.timeline.append((round(self.elapsed(), 2), sent, figures))

    def begin(self) -> None:
        """Start counting CPU from now, and sampling RSS in a thread until :meth:`end`."""
        self.timeline = []
        self._peak = {name: rss(procs) for name, procs in self.components.items()}
        self._cpu_at_begin = {name: cpu_seconds(procs) for name, procs in self.components.items()}
        self._busy_at_begin, self._began = _machine_busy_s(), time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-resources", daemon=True)
        self._thread.start()

    def end(self) -> tuple[float, dict[str, dict[str, float]]]:
        """Seconds since ``begin()``, and per component the CPU seconds used and the peak RSS in MB.

        ``other processes`` is the machine's busy CPU time that none of the components used.
        """
        self.stop()
        figures = {name: {"cpu_s": self._cpu(name), "peak_rss_mb": round(max(self._peak[name], rss(procs)) / 2**20, 1)}
                   for name, procs in self.components.items()}
        others = _machine_busy_s() - self._busy_at_begin - sum(f["cpu_s"] for f in figures.values())
        figures[OTHERS] = {"cpu_s": round(max(others, 0.0), 3), "peak_rss_mb": 0.0}
        return self.elapsed(), figures
