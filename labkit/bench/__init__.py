"""The benchmark: the whole path against a Kafka-only baseline, measured in one run.

Three paths, side by side, at fixed offered rates and up a ramp to the highest
rate carried with zero loss:

- ``baseline``: a confluent-kafka producer and consumer on the same broker;
- ``direct``: WebSocket to the producer's port, watcher on the consumer's port;
- ``full``: through the gateway (``/produce-events``, ``/consume-events``);

then fan-out (1 to 1,000 watchers through the gateway), and the largest fan-out on
1, 2, ... consumer processes. The same runner measures the long phases: an endurance
run (:func:`run_endurance`, one event per frame, latency per window with the broker's
memory and CPU) and a soak (:func:`run_soak`, memory over minutes, losses per watcher);
:func:`run_idle` is the stack's CPU with no traffic. ``BenchConfig.goals()`` (``labkit bench --goals``,
``make bench``) measures exactly the goals table of :mod:`labkit.bench.goals`. Load is open-loop: each
event carries its scheduled send time, and latency counts from it. Results go to
the terminal (rich tables), to ``bench-results/bench-<time>.json`` and to a
plotly plot (HTML, and PNG where Chromium is installed).

    from labkit.bench import BenchConfig, run_bench
    result, files = run_bench(BenchConfig.quick(Path("bench-results")))
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError
from labkit.rlimits import raise_open_files_limit
from labkit.settings import Settings
from labkit.ops.stack import Stack
from labkit.bench.config import PATHS, BenchConfig
from labkit.bench.results import BenchResult, LongRun, build_result, write_json
from labkit.bench.runner import BenchRunner, Pace, ProgressHook, StackSource
from labkit.procstats import cpu_cores

__all__ = ["BenchConfig", "BenchResult", "LongRun", "run_bench", "run_endurance", "run_soak", "run_idle",
           "fresh_stacks", "the_running_stack", "PATHS"]

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
    "embedded broker's fetches may slow as its topic fills, and phases one after the other on one stack would not compare."
)
RUNNING_NOTE = (
    "Measured on the running stack: the embedded broker gets slower as its topic fills (each fetch that returns "
    "records costs time in proportion to the batches stored), so figures depend on what the stack carried before."
)


def fresh_stacks(settings: Settings | None, on_stack_step: Callable[[str, int, int], None] | None = None) -> StackSource:
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


def run_bench(
    config: BenchConfig,
    *,
    settings: Settings | None = None,
    use_running: bool = False,
    on_progress: ProgressHook | None = None,
    on_stack_step: Callable[[str, int, int], None] | None = None,
) -> tuple[BenchResult, dict[str, Path]]:
    """Run the benchmark and write its JSON; returns the result and the files written.

    By default every phase runs on a stack of its own, started on free ports with a
    temporary state folder and stopped after it: the embedded broker gets slower as
    its topic fills, so each phase starts from the same state. With ``use_running``
    everything runs on the stack that ``labkit up`` started.
    """
    config.validate()
    started = time.time()
    if use_running:
        stack = Stack(settings)
        if not stack.adopt():
            raise LabkitError(f"no stack runs from {stack.state_dir}: start one with `labkit up`, or drop --use-running")
        stacks = the_running_stack(stack)
    else:
        raise_open_files_limit()  # inherited by the stacks this process starts: a thousand watchers
        stacks = fresh_stacks(settings, on_stack_step)
    runner = BenchRunner(config, stacks, on_progress)
    asyncio.run(runner.run())
    used = runner.last_stack.settings if runner.last_stack is not None else (settings or Settings())
    notes = list(NOTES) + ([RUNNING_NOTE] if use_running else [FRESH_NOTE])
    result = build_result(runner, config, used, not use_running, started, notes)
    return result, {"json": write_json(result, config.out_dir, started)}


async def _long(kind: str, stack: Stack, rate: float, seconds: float, watchers: int, pace: Pace,
                on_progress: ProgressHook | None) -> LongRun:
    # A long run drains longer than a phase: it ends with nothing new for 10 s, not 5.
    config = BenchConfig(drain_quiet_s=10.0, drain_limit_s=120.0, ack_timeout_s=120.0, watcher_processes=1)
    runner = BenchRunner(config, the_running_stack(stack), on_progress)
    phase = await runner.run_long(kind, rate, seconds, watchers, pace)
    return LongRun.of(kind, phase, stack.settings.broker)


async def run_endurance(stack: Stack, events: int = 50_000, rate: float = 1000.0, window: int = 5_000,
                        on_progress: ProgressHook | None = None) -> LongRun:
    """One event per frame through the gateway for ``events`` events: latency per window of ``window`` events,
    with the broker's memory and CPU in it; at the end, acknowledged events lost or delivered twice."""
    pace = Pace(max_batch=1, frame_interval_s=0.0005, mark_every_events=window)
    return await _long("endurance", stack, rate, events / rate, 1, pace, on_progress)


async def run_soak(stack: Stack, minutes: float, rate: float = 200.0, watchers: int = 2, sample_every_s: float = 5.0,
                   on_progress: ProgressHook | None = None) -> LongRun:
    """Steady load through the gateway for ``minutes``, ten frames a second: losses per watcher, and each
    component's resident memory every ``sample_every_s`` (a growing line is the leak to look for)."""
    pace = Pace(frame_interval_s=0.1, mark_every_s=sample_every_s)
    return await _long("soak", stack, rate, minutes * 60, watchers, pace, on_progress)


def run_idle(stack: Stack, seconds: float = 30.0) -> dict[str, float]:
    """Cores each component uses with the stack up and nobody sending or watching (goal: under 5% in total)."""
    pids = {row["component"]: row["pid"] for row in stack.status() if row["pid"]}
    return {name: round(cores, 4) for name, cores in cpu_cores(pids, seconds).items()}
