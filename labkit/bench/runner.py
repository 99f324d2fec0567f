"""One benchmark run: each path at fixed offered rates and up a ramp, then fan-out, then N consumers;
or one long phase of the full path, an endurance run or a soak (:meth:`BenchRunner.run_long`).

Every phase (one path at one rate, or one fan-out size) runs on a stack of its
own when the bench starts the stacks: the embedded broker answers fetches more
slowly as its topic fills, so phases measured one after the other on one stack
would each start from a different state. A phase opens one sender and one
receiver process, primes them (events on every partition until every watcher
has seen them all, which also proves the baseline consumer's ``assign()`` took
effect), sends the open-loop plan, waits for every ack, waits for every
acknowledged event at every watcher, and sums it up. Phases run one after the
other, so each has the machine to itself.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.admin import AdminClient

from labkit.ops.brokers import ensure_topic
from labkit.client import lab_api_key
from labkit.events import encode, now_ms
from labkit.ops.stack import Stack
from labkit.settings import REPLICATED, Settings
from labkit.bench.config import BASELINE, DIRECT, FULL, BenchConfig
from labkit.bench.load import BENCH_TYPE, LoadPlan
from labkit.bench.profile import ServiceProfiler
from labkit.bench.receiver_pool import ReceiverSpec, Receivers
from labkit.bench.resources import ResourceSampler
from labkit.bench.search import StepSearch
from labkit.bench.senders import KafkaLoad, WebSocketLoad
from labkit.bench.stats import PhaseResult, summarize, windows

__all__ = ["BenchRunner", "Pace", "RampResult", "BASELINE_TOPIC", "StackSource"]

BASELINE_TOPIC = "labkit-bench-baseline"
PRIME_ROUNDS = 10
PRIME_WAIT_S = 3.0
START_AHEAD_MS = 50.0  # the first event of a phase is due this long after the plan is made

ProgressHook = Callable[[str, int | None, int], None]  # description, total events (None: unknown), done
StackSource = Callable[..., AbstractAsyncContextManager[Stack]]  # a running stack for one phase (Settings changes)


@dataclass(frozen=True)
class Pace:
    """How a phase sends and samples, where it differs from the config's: one event per frame for an endurance
    run (``max_batch=1``), a frame every 0.1 s for a soak; a timeline mark every N events sent or every S seconds."""

    max_batch: int = 0  # 0: as many as fit a frame
    frame_interval_s: float = 0.0  # 0: the config's
    mark_every_events: int = 0
    mark_every_s: float = 0.0


@dataclass
class RampResult:
    path: str
    max_rate_carried: float
    steps: list[float] = field(default_factory=list)  # offered rates tried, in order
    stopped_because: str = ""


class BenchRunner:
    """Runs the phases of a :class:`BenchConfig`, each on a stack from ``stacks``."""

    def __init__(self, config: BenchConfig, stacks: StackSource, on_progress: ProgressHook | None = None) -> None:
        self.config = config
        self.stacks = stacks
        self.on_progress = on_progress or (lambda *_: None)
        self.phases: list[PhaseResult] = []
        self.ramps: dict[str, RampResult] = {}
        self.profiles: dict[str, Any] = {}
        self.last_stack: Stack | None = None
        self._tags = itertools.count()

    # -- plumbing ------------------------------------------------------------------

    def _attach(self, stack: Stack) -> None:
        self.last_stack = stack
        self.settings = stack.settings
        self.status_rows = stack.status()
        self.log_dir = stack.settings.state_dir / "logs"
        self.api_key = lab_api_key(stack.settings)
        self.sampler = ResourceSampler.for_stack(self.status_rows, os.getpid())
        for service in REPLICATED:  # replicas are measured together, as their service
            names = [name for name, _ in stack.settings.replicas(service)]
            pids = [row["pid"] for row in self.status_rows if row["component"] in names and row.get("pid")]
            for name in names:
                self.sampler.forget(name)
            self.sampler.set_processes(service, pids)

    def _partitions(self, topic: str) -> int:
        meta = AdminClient(self.settings.kafka_config()).list_topics(timeout=10).topics.get(topic)
        return len(meta.partitions) if meta is not None and meta.partitions else self.settings.partitions

    def _receiver_spec(self, path: str, connections: int) -> ReceiverSpec:
        s = self.settings
        if path == BASELINE:
            return ReceiverSpec("kafka", kafka_config=s.kafka_reader_config(), pause_when_idle=not s.broker_long_polls,
                                topic=BASELINE_TOPIC)
        url = s.url(s.consumer_port) if path == DIRECT else s.consume_url
        return ReceiverSpec("websocket", connections=connections, url=url, types=[BENCH_TYPE])

    def _sender(self, path: str) -> KafkaLoad | WebSocketLoad:
        s = self.settings
        if path == BASELINE:
            return KafkaLoad(s, BASELINE_TOPIC)
        return WebSocketLoad(s.url(s.producer_port) if path == DIRECT else s.produce_url, s, self.api_key)

    def _events_per_frame(self, plan: LoadPlan) -> int:
        """As many events as fit the producer's frame limit (max_frame_bytes) and batch limit (max_batch)."""
        # The longest id, +8 for sent_at's decimals (a stamp may print with fewer than 3), +1 for the comma.
        largest = len(encode(plan.event(plan.total - 1))) + 9
        fit = (self.settings.max_frame_bytes - 2) // largest
        return max(1, min(self.config.max_batch, self.settings.max_batch, fit))

    async def _prime(self, sender: KafkaLoad | WebSocketLoad, receivers: Receivers, partitions: int) -> None:
        """Send one event on every key, round after round, until every watcher has seen every partition."""
        tag = f"prime-{next(self._tags)}"
        plan = LoadPlan(tag, 1000.0, 1.0, now_ms(), self.config.keys)
        for round_ in range(PRIME_ROUNDS):
            keys = self.config.keys
            await sender.send_now([plan.event(seq) for seq in range(round_ * keys, (round_ + 1) * keys)])
            if await receivers.prime(tag, partitions, timeout_s=PRIME_WAIT_S):
                return
        raise RuntimeError(
            f"after {PRIME_ROUNDS} rounds the watchers had not seen events on all {partitions} partitions; "
            f"see the logs in {self.log_dir}"
        )

    async def _phase(self, path: str, phase: str, sender: KafkaLoad | WebSocketLoad, receivers: Receivers,
                     rate: float, duration_s: float, pace: Pace) -> PhaseResult:
        cfg = self.config
        watchers, consumers = receivers.spec.connections, self.settings.consumers
        label = f"{path} @ {rate:,.0f} ev/s" + (f", {watchers} watchers" if phase in ("fanout", "consumers") else f" ({phase})")
        if phase == "consumers":
            label += f" on {consumers} consumer{'s' if consumers > 1 else ''}"
        plan = LoadPlan(f"{path}-{next(self._tags)}", rate, duration_s, now_ms() + START_AHEAD_MS, cfg.keys)
        self.on_progress(label, plan.total, 0)
        self.sampler.begin()
        marking = bool(pace.mark_every_events or pace.mark_every_s)
        if marking:
            self.sampler.mark(0)

        def progress(done: int) -> None:
            self.on_progress(label, plan.total, done)
            seconds, last, _ = self.sampler.timeline[-1] if marking else (0.0, 0, None)
            if marking and done > last and (
                done == plan.total or (pace.mark_every_events and done // pace.mark_every_events > last // pace.mark_every_events)
                or (pace.mark_every_s and self.sampler.elapsed() >= seconds + pace.mark_every_s)
            ):
                self.sampler.mark(done)

        outcome = await sender.run(
            plan, max_batch=pace.max_batch or self._events_per_frame(plan),
            frame_interval_s=pace.frame_interval_s or cfg.frame_interval_s, ack_timeout_s=cfg.ack_timeout_s,
            on_progress=progress,
        )
        self.on_progress(f"{label}: waiting for deliveries", plan.total, plan.total)
        report = await receivers.drain(plan.tag, len(outcome.acked), cfg.drain_quiet_s, cfg.drain_limit_s)
        if pace.mark_every_s:  # memory once everything has arrived, too
            self.sampler.mark(plan.total)
        elapsed_s, resources = self.sampler.end()
        result = summarize(path, phase, plan, outcome.stats, outcome.acked, outcome.refused, outcome.ack_latency_ms,
                           report, kafka_only=path == BASELINE)
        result.resources = resources
        result.consumers = consumers
        if marking:
            result.timeline = list(self.sampler.timeline)
            result.windows = windows(report, result.timeline) if pace.mark_every_events else []
        if outcome.closed_because:
            result.closed.append(f"sender: {outcome.closed_because}")
        result.elapsed_s = round(elapsed_s, 2)
        result.carried = result.clean and (result.latency.p99 or 0.0) <= cfg.ramp_p99_limit_ms
        self.phases.append(result)
        return result

    async def _measure(self, path: str, phase: str, rate: float, duration_s: float, watchers: int = 1,
                       consumers: int = 1, pace: Pace = Pace()) -> PhaseResult:
        """One phase on a stack of its own: connect, prime, send, drain, sum up.

        With ``consumers`` above 1 the stack runs that many consumer replicas, and the
        watchers reach them through the gateway, which spreads them (least connections).
        """
        cfg = self.config
        if phase in ("fanout", "consumers"):
            self.on_progress(f"{phase}: starting a stack and {watchers} watchers", None, 0)
        changes: dict[str, int] = {"consumers": consumers} if consumers > 1 else {}
        if watchers > Settings.model_fields["max_connections_per_address"].default:
            # Every bench watcher comes from this one address: raised explicitly, past the per-address limit.
            changes["max_connections_per_address"] = watchers
        async with self.stacks(**changes) as stack:
            self._attach(stack)
            topic = BASELINE_TOPIC if path == BASELINE else self.settings.topic
            if path == BASELINE:
                await asyncio.to_thread(ensure_topic, self.settings.replace(topic=BASELINE_TOPIC))
            spec = self._receiver_spec(path, watchers)
            processes = cfg.watcher_processes if phase in ("fanout", "consumers") else 1
            async with Receivers(spec, processes, self.log_dir, [spec.url]) as receivers, self._sender(path) as sender:
                self.sampler.set_processes("bench watchers", receivers.pids)
                await self._prime(sender, receivers, await asyncio.to_thread(self._partitions, topic))
                profiler = None
                if cfg.profile and phase == "fixed":
                    profiler = ServiceProfiler(self.status_rows, cfg.out_dir / "profiles", f"{path}-{rate:.0f}")
                    profiler.start()
                self.sampler.start()
                try:
                    return await self._phase(path, phase, sender, receivers, rate, duration_s, pace)
                finally:
                    self.sampler.stop()
                    if profiler is not None:
                        self.profiles[f"{path} @ {rate:,.0f} ev/s"] = await asyncio.to_thread(profiler.stop)

    # -- sections --------------------------------------------------------------------

    async def _ramp(self, path: str, fixed: list[PhaseResult]) -> RampResult:
        """The step search (labkit.bench.search), seeded with the path's fixed rates."""
        cfg = self.config
        search = StepSearch(cfg.ramp_step, cfg.ramp_step, cfg.ramp_max_rate, cfg.ramp_refine)
        tried = [(r.offered_rate, r.carried) for r in sorted(fixed, key=lambda r: r.offered_rate)]
        ramp = RampResult(path, 0.0)
        while (rate := search.next_rate(tried)) is not None:
            step = await self._measure(path, "ramp", rate, cfg.ramp_duration_s)
            ramp.steps.append(rate)
            tried.append((rate, step.carried))
        ramp.max_rate_carried = search.best_rate(tried)
        ramp.stopped_because = search.stopped_because(tried)
        return ramp

    async def run_path(self, path: str) -> None:
        """Every fixed rate of one path, then its ramp."""
        cfg = self.config
        fixed = [await self._measure(path, "fixed", rate, cfg.duration_s) for rate in cfg.rates]
        if cfg.ramp:
            self.ramps[path] = await self._ramp(path, fixed)

    async def run_fanout(self) -> None:
        """Each fan-out size in turn, through the gateway."""
        for watchers in self.config.fanout:
            await self._measure(FULL, "fanout", self.config.fanout_rate, self.config.fanout_duration_s, watchers)

    async def run_consumers(self) -> None:
        """The largest fan-out size on 1, 2, ... consumer replicas, watchers through the gateway."""
        cfg = self.config
        watchers = max(cfg.fanout)
        for consumers in cfg.consumers:
            await self._measure(FULL, "consumers", cfg.fanout_rate, cfg.fanout_duration_s, watchers, consumers)

    async def run_long(self, phase: str, rate: float, duration_s: float, watchers: int, pace: Pace) -> PhaseResult:
        """An endurance or soak phase: the full path for minutes, marked as ``pace`` says (windows, memory samples)."""
        return await self._measure(FULL, phase, rate, duration_s, watchers, pace=pace)

    async def run(self) -> None:
        """Everything the config asks for."""
        for path in self.config.paths:
            await self.run_path(path)
        if self.config.fanout:
            await self.run_fanout()
            await self.run_consumers()
