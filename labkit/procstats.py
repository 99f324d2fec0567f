"""CPU and memory of the lab's processes, read with psutil: for `labkit status` and the benchmark."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

import psutil

__all__ = ["family", "cpu_seconds", "cpu_cores", "cpu_cores_of", "rss", "rss_bytes"]


def family(pid: int) -> list[psutil.Process]:
    """The process and its children (nginx's workers), looked up once: psutil finds children by scanning /proc."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def cpu_cores(pids: Mapping[str, int], seconds: float) -> dict[str, float]:
    """Cores each named process (with its children) used over the next ``seconds``: 1.0 is one core busy."""
    return cpu_cores_of({name: family(pid) for name, pid in pids.items()}, seconds)


def cpu_cores_of(families: Mapping[str, list[psutil.Process]], seconds: float) -> dict[str, float]:
    """Cores each named group of processes used over the next ``seconds``."""
    before = {name: cpu_seconds(procs) for name, procs in families.items()}
    began = time.monotonic()
    time.sleep(seconds)  # a measurement window, not synchronisation
    elapsed = time.monotonic() - began
    return {name: (cpu_seconds(procs) - before[name]) / elapsed for name, procs in families.items()}


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children."""
    return rss(family(pid))


def rss(procs: list[psutil.Process]) -> int:
    """Resident memory of these processes, together."""
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # it ended meanwhile
            total += proc.memory_info().rss
    return total
