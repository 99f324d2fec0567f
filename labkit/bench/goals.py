"""The goals the lab is measured against, each beside its Kafka-only baseline from the same run.

| measure | goal |
| --- | --- |
| full path at 1,000 ev/s | p50 < 2 ms, p99 < 10 ms |
| full path at 5,000 ev/s | p99 < 25 ms |
| highest rate carried with zero loss | >= 25,000 ev/s |
| 100 watchers x 100 ev/s | p99 < 20 ms |
| 1,000 watchers x 100 ev/s | p99 < 250 ms, nothing lost |

:func:`check_goals` reads them from a run's phases and ramps; a goal the run did not measure says so
(``met`` None). ``BenchConfig.goals()`` is the run that measures exactly these. :func:`ratios` sets each
path's percentiles beside the baseline's at every fixed rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labkit.bench.config import BASELINE, DIRECT, FULL
from labkit.bench.stats import PhaseResult, find_phase, ratio

__all__ = ["GoalCheck", "check_goals", "ratios", "cpu_line"]


@dataclass
class GoalCheck:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: this run did not measure it
    baseline: str = ""  # the same measure on the Kafka-only path, and the ratio to it
    cpu: str = ""  # where the machine went in the phase measured: cores busy, CPU µs per event by component


CPU_NAMES = {"producer": "producer", "consumer": "consumer", "gateway": "gateway", "broker": "broker",
             "bench sender": "sender", "bench watchers": "watchers", "other processes": "others"}


def cpu_line(phase: PhaseResult | None) -> str:
    """``cores 1.9: consumer 5.3, gateway 3.8, ...`` (µs of CPU per event delivered to one watcher)."""
    if phase is None or not phase.resources:
        return ""
    per_event = phase.cpu_us_per_delivery()
    parts = [f"{short} {per_event[name]:,.1f}" for name, short in CPU_NAMES.items() if per_event.get(name)]
    return f"cores {sum(phase.cores().values()):.2f}; µs/event: " + ", ".join(parts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f} ms"


def _against(value: float | None, base: float | None, text: str) -> str:
    """``text`` (the baseline's figure), and how many times it the measured figure is."""
    times = ratio(value, base)
    return text + (f" (x{times:g})" if times is not None else "")


def _latency_goal(name: str, goal: str, phase: PhaseResult | None, base: PhaseResult | None,
                  limits: dict[str, float]) -> GoalCheck:
    """Percentile limits (``{"p50": 2, "p99": 10}``), nothing lost; the baseline's same percentiles."""
    if phase is None:
        return GoalCheck(name, goal, "not measured", None)
    ms = {key: getattr(phase.latency, key) for key in limits}
    met = phase.clean and all(v is not None and v < limits[k] for k, v in ms.items())
    measured = ", ".join(f"{k} {_ms(v)}" for k, v in ms.items())
    if not phase.clean:
        measured += f", {phase.lost:,} lost" + (f", {len(phase.closed)} closed" if phase.closed else "") + \
            (f", {sum(phase.refused.values()):,} refused" if phase.refused else "")
    baseline = "" if base is None else ", ".join(
        _against(ms[k], getattr(base.latency, k), f"{k} {_ms(getattr(base.latency, k))}") for k in limits)
    return GoalCheck(name, goal, measured, met, baseline, cpu_line(phase))


def check_goals(phases: list[PhaseResult], ramps: dict[str, Any]) -> list[GoalCheck]:
    """The goals table for one run."""
    base_at = {rate: find_phase(phases, BASELINE, "fixed", rate) for rate in (100.0, 1_000.0, 5_000.0)}
    checks = [
        _latency_goal("full path at 1,000 ev/s", "p50 < 2 ms, p99 < 10 ms", find_phase(phases, FULL, "fixed", 1_000.0),
                      base_at[1_000.0], {"p50": 2.0, "p99": 10.0}),
        _latency_goal("full path at 5,000 ev/s", "p99 < 25 ms", find_phase(phases, FULL, "fixed", 5_000.0),
                      base_at[5_000.0], {"p99": 25.0}),
    ]
    full, base = ramps.get(FULL), ramps.get(BASELINE)
    name, goal = "highest rate carried with zero loss", ">= 25,000 ev/s"
    if full is None:
        checks.append(GoalCheck(name, goal, "not measured", None))
    else:
        carried = full["max_rate_carried"]
        baseline = "" if base is None else _against(carried, base["max_rate_carried"],
                                                    f"{base['max_rate_carried']:,.0f} ev/s")
        # The CPU of the first step not carried: what ran out.
        steps = [p for p in phases if p.path == FULL and p.phase == "ramp" and not p.carried]
        cpu = cpu_line(min(steps, key=lambda p: p.offered_rate) if steps else None)
        best = [p for p in phases if p.path == FULL and p.carried and abs(p.offered_rate - carried) < 1e-6]
        frames = f" ({best[0].sent / best[0].frames_sent:.0f} ev/frame)" if best and best[0].frames_sent else ""
        checks.append(GoalCheck(name, goal, f"{carried:,.0f} ev/s{frames}", carried >= 25_000, baseline, cpu))
    for watchers, limit in ((100, 20.0), (1_000, 250.0)):
        wanted = f"p99 < {limit:g} ms" + (", nothing lost" if watchers >= 1_000 else "")
        checks.append(_latency_goal(f"{watchers:,} watchers x 100 ev/s", wanted,
                                    find_phase(phases, FULL, "fanout", 100.0, watchers), base_at[100.0],
                                    {"p99": limit}))
    return checks


def ratios(phases: list[PhaseResult], rates: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per fixed rate with a baseline: ``{"rate", "full/baseline p50", ... "direct/baseline p99"}``."""
    rows = []
    for rate in rates:
        if (base := find_phase(phases, BASELINE, "fixed", rate)) is not None:
            row: dict[str, Any] = {"rate": rate}
            for path in (FULL, DIRECT):
                if (other := find_phase(phases, path, "fixed", rate)) is not None:
                    for point in ("p50", "p99"):
                        row[f"{path}/baseline {point}"] = ratio(getattr(other.latency, point),
                                                                getattr(base.latency, point))
            rows.append(row)
    return rows
