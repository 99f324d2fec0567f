"""What one benchmark run measures: offered rates, durations, fan-out sizes, the ramp.

Plain data with defaults, so the CLI, the tests and a notebook build the same
thing; :func:`BenchConfig.quick` is the small run the tests use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["BenchConfig", "PATHS", "BASELINE", "DIRECT", "FULL", "WARM_UP_JVM_S"]

BASELINE = "baseline"  # confluent-kafka producer and consumer on the same broker
DIRECT = "direct"  # WebSocket to the producer's port, watcher on the consumer's port
FULL = "full"  # through the gateway: /produce-events and /consume-events
PATHS = (BASELINE, DIRECT, FULL)
WARM_UP_JVM_S = 10.0


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run does; every field has a CLI flag."""

    paths: tuple[str, ...] = PATHS
    rates: tuple[float, ...] = (100.0, 1_000.0, 10_000.0)
    duration_s: float = 3.0

    # Ramp (labkit.bench.runner.StepSearch): from the path's fixed rates, up by `ramp_step` until a step is not
    # carried, then bisect `ramp_refine` times between the last step carried and the first that was not.
    ramp: bool = True
    ramp_step: float = 5_000.0
    ramp_max_rate: float = 100_000.0
    ramp_refine: int = 1
    ramp_duration_s: float = 3.0
    # A step is carried when nothing is lost or refused and p99 stays under this: an open-loop
    # system that does not keep up has a latency that grows with every second it runs.
    ramp_p99_limit_ms: float = 500.0

    fanout: tuple[int, ...] = (1, 10, 100, 1_000)
    fanout_rate: float = 100.0
    fanout_duration_s: float = 3.0
    watcher_processes: int = 2
    # Consumer processes compared at the largest fan-out size, watchers spread evenly over them and
    # connected to each consumer's own port (the gateway routes to one consumer): "2 against 1".
    consumers: tuple[int, ...] = ()

    # Sending: events due together go in one frame (a JSON array), at most one frame per
    # `frame_interval_s` per connection, which keeps a sender under the producer's
    # per-connection message limit (2000/s by default) at any event rate.
    frame_interval_s: float = 0.001
    max_batch: int = 1000
    keys: int = 16

    # Sent at each phase's rate (1,000 ev/s at most), unmeasured, before the phase: a fresh Apache Kafka JVM
    # compiles its hot code in its first seconds of traffic, and a phase that includes that measures the
    # compiler, not the path (docs/performance.md).
    # None: WARM_UP_JVM_S on a broker that runs in a JVM, 0 on the others.
    warm_up_s: float | None = None

    drain_quiet_s: float = 5.0  # stop waiting for missing events after this long with no arrival
    drain_limit_s: float = 60.0
    ack_timeout_s: float = 60.0

    out_dir: Path = field(default_factory=lambda: Path("bench-results"))
    png: bool = True
    profile: bool = False  # py-spy record the services (needs py-spy on PATH)

    @classmethod
    def quick(cls, out_dir: Path, **changes: Any) -> BenchConfig:
        """A short, low-rate run that exercises every part (what the tests run)."""
        return replace(cls(rates=(50.0,), duration_s=1.0, ramp=False, fanout=(2,), fanout_rate=50.0,
                           fanout_duration_s=1.0, drain_quiet_s=2.0, warm_up_s=0.0, out_dir=out_dir, png=False),
                       **changes)

    @classmethod
    def goals(cls, out_dir: Path, **changes: Any) -> BenchConfig:
        """Exactly the goals table (labkit.bench.goals), each with its baseline, in a few minutes."""
        return replace(cls(paths=(BASELINE, FULL), rates=(100.0, 1_000.0, 5_000.0), duration_s=5.0,
                           ramp_max_rate=50_000.0, fanout=(100, 1_000), fanout_duration_s=5.0, consumers=(1, 2),
                           out_dir=out_dir), **changes)

    def warm_up_on(self, broker: str) -> float:
        """Seconds of unmeasured traffic before each phase on a stack with this broker."""
        if self.warm_up_s is not None:
            return self.warm_up_s
        return WARM_UP_JVM_S if broker == "kafka" else 0.0

    def validate(self) -> BenchConfig:
        problems = {
            f"unknown path {next((p for p in self.paths if p not in PATHS), '')!r}: choose from {', '.join(PATHS)}":
                not set(self.paths) <= set(PATHS),
            "rates must be above 0 events per second": any(rate <= 0 for rate in (*self.rates, self.fanout_rate)),
            "fan-out watcher counts must be at least 1": any(count < 1 for count in self.fanout),
            "durations must be above 0 seconds":
                min(self.duration_s, self.fanout_duration_s, self.ramp_duration_s) <= 0,
            "ramp_step must be above 0 events per second": self.ramp_step <= 0,
            "consumer counts must be at least 1": any(count < 1 for count in self.consumers),
            "watcher_processes must be at least 1": self.watcher_processes < 1,
            "warm_up_s must be 0 or more seconds": (self.warm_up_s or 0.0) < 0,
        }
        for problem in (text for text, found in problems.items() if found):
            raise ValueError(problem)
        return self
