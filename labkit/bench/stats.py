"""The bench's one statistics module: from arrivals and acks to figures (latency, losses, throughput, hops, windows).

Pure functions over numbers (numpy; percentiles from :mod:`labkit.percentiles`), no sockets: one phase's
sender outcome and receiver report in, one :class:`PhaseResult` out. A long phase (endurance, soak) is a
:class:`PhaseResult` too, with its timeline of marks and the verdict of its goal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from labkit.bench.config import BASELINE
from labkit.bench.load import LoadPlan, SendOutcome
from labkit.bench.receivers import TagReport
from labkit.percentiles import percentiles

__all__ = ["Latency", "PhaseResult", "Window", "summarize", "windows", "find_phase", "ratio", "HOPS", "BENCH_OWN"]

# The path of one event, from the stamps it carries (all epoch ms on one machine's clock).
HOPS = ("sender→producer", "producer→Kafka", "Kafka→consumer", "consumer→watcher")
#: The bench's own processes and the rest of the machine: measured, but not the stack whose memory a long run follows.
BENCH_OWN = ("bench sender", "bench watchers", "other processes")


@dataclass
class Latency:
    """Milliseconds; None where nothing was measured."""

    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    p999: float | None = None
    max: float | None = None
    mean: float | None = None

    @classmethod
    def of(cls, values: np.ndarray | list[float]) -> Latency:
        data = np.asarray(values, dtype=np.float64)
        cuts = percentiles(data, (50, 90, 99, 99.9))
        if not cuts:
            return cls()
        return cls(int(data.size), **{name: round(value, 3) for name, value in cuts.items()},
                   mean=round(float(data.mean()), 3))


@dataclass
class Window:
    """One stretch of a long phase (an endurance window): latency of its events, the broker's memory and CPU then."""

    first: int
    last: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    broker_rss_mb: float
    broker_cpu_cores: float


Mark = tuple[float, int, dict[str, dict[str, float]]]  # seconds, events sent, {component: {"cpu_s", "rss_mb"}}


@dataclass
class PhaseResult:
    """One path at one offered rate (or one fan-out size, or a long phase): what went in, what came out, how fast."""

    path: str
    phase: str  # "fixed", "ramp", "fanout", "consumers", "endurance" or "soak"
    offered_rate: float
    duration_s: float
    watchers: int
    consumers: int = 1  # consumer processes the watchers were spread over
    sent: int = 0
    acked: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    delivered: int = 0  # distinct (watcher, event) arrivals
    lost: int = 0  # acknowledged events a watcher never received, summed over watchers
    watchers_with_loss: int = 0
    lost_per_watcher: list[int] = field(default_factory=list)
    duplicates_per_watcher: list[int] = field(default_factory=list)
    duplicates: int = 0
    unexpected: int = 0  # arrivals of events that were not acknowledged
    throughput: float = 0.0  # events per second reaching one watcher (the mean over watchers)
    frames_per_s: float = 0.0  # events per second reaching all watchers together
    latency: Latency = field(default_factory=Latency)  # scheduled send -> arrival at the watcher
    ack_latency: Latency = field(default_factory=Latency)  # scheduled send -> ack at the sender
    hops: dict[str, Latency] = field(default_factory=dict)
    send_lag_mean_ms: float = 0.0  # the client's own delay between schedule and send
    send_lag_max_ms: float = 0.0
    frames_sent: int = 0
    closed: list[str] = field(default_factory=list)  # watchers that were disconnected, and why
    elapsed_s: float = 0.0  # wall time of the phase, sending and draining: what CPU seconds compare to
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    timeline: list[Mark] = field(default_factory=list)  # long phases: where they stood at each mark
    windows: list[Window] = field(default_factory=list)  # endurance: between each two marks
    carried: bool = False

    def cores(self) -> dict[str, float]:
        """Each component's CPU seconds over the phase's wall time: the share of a core it kept busy."""
        wall = self.elapsed_s or 1.0
        return {name: round(figures["cpu_s"] / wall, 2) for name, figures in self.resources.items()}

    def cpu_us_per_delivery(self) -> dict[str, float]:
        """Each component's CPU microseconds per event delivered to one watcher."""
        if not self.delivered:
            return {}
        return {name: round(f["cpu_s"] * 1e6 / self.delivered, 1) for name, f in self.resources.items()}

    @property
    def clean(self) -> bool:
        """Nothing lost, nothing refused, no watcher closed."""
        return self.lost == 0 and not self.refused and not self.closed and self.acked == self.sent

    @property
    def memory(self) -> list[tuple[float, dict[str, float]]]:
        """[seconds since start, {stack component: resident MB}] at each mark of a long phase."""
        return [(seconds, {name: f["rss_mb"] for name, f in figures.items() if name not in BENCH_OWN})
                for seconds, _, figures in self.timeline]

    def memory_growth_mb(self) -> dict[str, float]:
        """Resident memory at the end minus at the first mark after warm-up, per component."""
        memory = self.memory
        if len(memory) < 2:
            return {}
        first, last = memory[1][1], memory[-1][1]
        return {name: round(last[name] - first.get(name, last[name]), 1) for name in last}

    @property
    def p99_ratio(self) -> float | None:
        """Last window's p99 over the first's: the endurance goal is at most 2."""
        full = [w for w in self.windows if w.p99_ms > 0]
        return round(full[-1].p99_ms / full[0].p99_ms, 2) if len(full) >= 2 else None

    @property
    def passed(self) -> bool:
        """A long phase's goal: nothing lost or refused (a soak); nothing lost or twice, p99 within 2x (endurance)."""
        if self.phase == "soak":
            return self.lost == 0 and not self.refused
        return self.lost == 0 and self.duplicates == 0 and (self.p99_ratio or 0) <= 2.0


def _hops(report: TagReport, kafka_only: bool) -> dict[str, Latency]:
    if not report.stamps:
        return {}
    stamps = np.asarray(report.stamps, dtype=np.float64)
    sent_at, received_at, kafka_ts, delivered_at, arrival = (stamps[:, i] for i in range(1, 6))
    spans = [received_at - sent_at, kafka_ts - received_at, delivered_at - kafka_ts, arrival - delivered_at]
    # The baseline's own consumer is the watcher: there is no last hop.
    hops = HOPS[:3] if kafka_only else HOPS
    return {name: Latency.of(values) for name, values in zip(hops, spans[:len(hops)], strict=True)}


def summarize(path: str, phase: str, plan: LoadPlan, outcome: SendOutcome, report: TagReport) -> PhaseResult:
    acked_seqs = np.unique(np.asarray(outcome.acked, dtype=np.int64))
    result = PhaseResult(
        path, phase, plan.rate, plan.duration_s, len(report.connections), sent=outcome.sent,
        acked=int(acked_seqs.size), refused={code: n for code, n in outcome.refused.items() if n},
        send_lag_mean_ms=round(outcome.lag_mean_ms, 3), send_lag_max_ms=round(outcome.lag_max_ms, 3),
        frames_sent=outcome.frames, closed=list(report.closed),
    )
    last_arrival = plan.start_ms
    for connection in report.connections:
        seqs = np.asarray(connection.seqs, dtype=np.int64)
        distinct = np.unique(seqs)
        missing = int(np.setdiff1d(acked_seqs, distinct, assume_unique=True).size)
        result.lost_per_watcher.append(missing)
        result.duplicates_per_watcher.append(int(seqs.size - distinct.size))
        result.unexpected += int(np.setdiff1d(distinct, acked_seqs, assume_unique=True).size)
        result.delivered += int(distinct.size)
        if seqs.size:
            arrivals = plan.start_ms + seqs * (1000.0 / plan.rate) + np.asarray(connection.latency_ms)
            last_arrival = max(last_arrival, float(arrivals.max()))
    result.lost, result.duplicates = sum(result.lost_per_watcher), sum(result.duplicates_per_watcher)
    result.watchers_with_loss = sum(n > 0 for n in result.lost_per_watcher)
    window_s = max((last_arrival - plan.start_ms) / 1000.0, plan.duration_s, 1e-9)
    watchers = len(report.connections)
    result.throughput = round(result.delivered / watchers / window_s if watchers else 0.0, 1)
    result.frames_per_s = round(result.delivered / window_s, 1)
    result.latency = Latency.of(np.concatenate([np.asarray(c.latency_ms) for c in report.connections] or [np.empty(0)]))
    result.ack_latency = Latency.of(outcome.ack_latency_ms)
    result.hops = _hops(report, path == BASELINE)
    return result


def windows(report: TagReport, timeline: list[Mark], component: str = "broker") -> list[Window]:
    """Between each two marks of the timeline: the first watcher's latency of the events sent then, and
    ``component``'s memory at the window's end and the cores it kept busy during it."""
    if not report.connections:
        return []
    seqs = np.asarray(report.connections[0].seqs, dtype=np.int64)
    latency = np.asarray(report.connections[0].latency_ms, dtype=np.float64)
    found = []
    for (t0, start, before), (t1, end, after) in pairwise(timeline):
        if end <= start:
            continue
        cuts = percentiles(latency[(seqs >= start) & (seqs < end)], (50, 99))
        cpu = after.get(component, {}).get("cpu_s", 0.0) - before.get(component, {}).get("cpu_s", 0.0)
        found.append(Window(start, end - 1, p50_ms=round(cuts.get("p50", 0.0), 2),
                            p99_ms=round(cuts.get("p99", 0.0), 2), max_ms=round(cuts.get("max", 0.0), 2),
                            broker_rss_mb=after.get(component, {}).get("rss_mb", 0.0),
                            broker_cpu_cores=round(cpu / max(t1 - t0, 1e-6), 3)))
    return found


def find_phase(phases: list[PhaseResult], path: str, phase: str, rate: float | None = None,
               watchers: int | None = None) -> PhaseResult | None:
    return next((p for p in phases if p.path == path and p.phase == phase and (watchers in (None, p.watchers))
                 and (rate is None or abs(p.offered_rate - rate) < 1e-6)), None)


def ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 2) if top is not None and bottom else None
