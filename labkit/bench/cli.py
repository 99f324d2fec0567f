"""``labkit bench``: every bench command (a typer sub-app, added to the labkit CLI as ``bench``).

    labkit bench --goals                  # exactly the goals table (labkit.bench.goals), with its baseline
    labkit bench                          # fresh stack on free ports, default rates, ramp, fan-out
    labkit bench --use-running            # the stack `labkit up` started
    labkit bench --rates 1000 --no-ramp --fanout 1000 --profile
    labkit bench endurance | soak | idle  # the long phases, and the idle stack's CPU
    labkit bench brokers                  # the brokers side by side
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from labkit.bench.config import BenchConfig
from labkit.bench.runner import ProgressHook, StepHook, adopted_stack, fresh_stacks, run_bench, the_running_stack
from labkit.errors import LabkitError
from labkit.ops.stack import Stack
from labkit.settings import Settings

__all__ = ["bench_app"]

bench_app = typer.Typer(help="Benchmark the whole path against a Kafka-only baseline.", add_completion=False,
                        pretty_exceptions_enable=False)
out = Console(record=True)  # recorded: the tables are also saved as HTML beside the JSON
if not out.is_terminal:  # a file or a pipe: wide enough for the tables
    out = Console(width=170, record=True)
err = Console(stderr=True)
T = TypeVar("T")


def _numbers(text: str, name: str, kind: type = float) -> tuple:
    """``"100,1_000"`` -> (100.0, 1000.0); ``"none"`` -> ()."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(kind(item.replace("_", "")) for item in text.split(",") if item.strip())
    except ValueError:
        raise typer.BadParameter(f"expected numbers separated by commas, e.g. 100,1000: got {text!r}",
                                 param_hint=name) from None
    if not values:
        raise typer.BadParameter("give at least one value", param_hint=name)
    return values


@contextmanager
def _progress() -> Iterator[tuple[ProgressHook, StepHook]]:
    """One progress bar on stderr: the stack's start-up steps, then the events of the phase that runs."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, refresh_per_second=4) as progress:
        task = progress.add_task("starting the stack", total=None)

        def on_progress(label: str, total: int | None, done: int) -> None:
            progress.update(task, description=label, total=total, completed=done)

        def on_step(text: str, step: int, steps: int) -> None:
            progress.update(task, description=text, total=steps, completed=step - 1)

        yield on_progress, on_step


def _on_a_stack(use_running: bool, broker: str | None,
                work: Callable[[Stack, ProgressHook], Awaitable[T]]) -> tuple[str, T]:
    """``work`` on the running stack, or on a fresh one on free ports (stopped after); the broker's name, its result."""
    async def run() -> tuple[str, T]:
        with _progress() as (on_progress, on_step):
            stacks = the_running_stack(adopted_stack()) if use_running else fresh_stacks(
                Settings(broker=broker) if broker else None, on_step)
            async with stacks() as stack:
                return stack.settings.broker, await work(stack, on_progress)

    return asyncio.run(run())


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    rates: Annotated[str, typer.Option(help="Fixed offered rates, events/s, comma-separated.")] = "100,1000,10000",
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds per fixed rate.")] = 3.0,
    paths: Annotated[str, typer.Option(help="Paths to measure: baseline, direct, full.")] = "baseline,direct,full",
    ramp: Annotated[bool, typer.Option(help="Ramp up to the highest rate carried with zero loss.")] = True,
    ramp_step: Annotated[float, typer.Option(
        min=1.0, help="The ramp's step up (ev/s), from the fixed rates.")] = 5_000.0,
    ramp_max: Annotated[float, typer.Option(help="Highest rate the ramp tries.")] = 100_000.0,
    ramp_p99_limit: Annotated[float, typer.Option(
        help="A ramp step is carried when p99 stays under this (ms).")] = 500.0,
    fanout: Annotated[str, typer.Option(
        help="Watcher counts for fan-out (gateway); 'none' to skip.")] = "1,10,100,1000",
    fanout_rate: Annotated[float, typer.Option(min=0.1)] = 100.0,
    fanout_duration: Annotated[float, typer.Option(min=0.1)] = 3.0,
    watcher_processes: Annotated[int, typer.Option(min=1, help="Processes the fan-out watchers are spread over.")] = 2,
    consumers: Annotated[str, typer.Option(
        help="Consumer process counts to compare at the largest fan-out size (e.g. 1,2); 'none' to skip.")] = "none",
    warm_up: Annotated[float | None, typer.Option(
        min=0.0, help="Seconds of unmeasured traffic before each phase [default: 10 on Apache Kafka, 0 on others].",
        show_default=False)] = None,
    use_running: Annotated[bool, typer.Option(help="Measure the running stack instead of starting one.")] = False,
    state_dir: Annotated[Path | None, typer.Option(help="State folder of the running stack (--use-running).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON and the plot go.")] = Path("bench-results"),
    png: Annotated[bool, typer.Option(help="Also render the plot as PNG (needs Chromium).")] = True,
    profile: Annotated[bool, typer.Option(help="Record the services with py-spy and show what costs.")] = False,
    quick: Annotated[bool, typer.Option(help="A short low-rate run (1 s at 50 ev/s, 2 watchers).")] = False,
    goals: Annotated[bool, typer.Option(help="Exactly the goals table with its baseline (a few minutes).")] = False,
) -> None:
    """Measure baseline, direct and full paths side by side, then fan-out; write JSON and a plot."""
    if ctx.invoked_subcommand is not None:  # `labkit bench soak`: only the subcommand runs
        return
    from labkit.bench.plot import render_png, write_plot  # plotly loads only when a plot is drawn
    from labkit.bench.report import print_report, write_json

    config = BenchConfig(
        paths=tuple(p.strip() for p in paths.split(",") if p.strip()), rates=_numbers(rates, "--rates"),
        duration_s=duration, ramp=ramp, ramp_step=ramp_step, ramp_max_rate=ramp_max, ramp_p99_limit_ms=ramp_p99_limit,
        fanout=_numbers(fanout, "--fanout", int), fanout_rate=fanout_rate, fanout_duration_s=fanout_duration,
        watcher_processes=watcher_processes, consumers=_numbers(consumers, "--consumers", int), warm_up_s=warm_up,
        out_dir=out_dir, png=png, profile=profile)
    if quick:
        config = BenchConfig.quick(out_dir, paths=config.paths, png=png, profile=profile)
    elif goals:
        config = BenchConfig.goals(out_dir, png=png, profile=profile)
    try:
        config.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    started = time.time()
    with _progress() as (on_progress, on_step):
        result = run_bench(config, settings=Settings(state_dir=state_dir) if state_dir is not None else None,
                           use_running=use_running, on_progress=on_progress, on_stack_step=on_step)
    print_report(result, out)
    data = write_json(result, config.out_dir, started)
    tables, html = data.with_name(data.stem + "-tables.html"), write_plot(result, data.with_suffix(".html"))
    out.save_html(str(tables))
    out.print(f"results: {data}\ntables: {tables}\nplot: {html}", highlight=False)
    if config.png:
        problem = render_png(html, html.with_suffix(".png"))
        out.print(f"note: {problem}" if problem else f"plot (PNG): {html.with_suffix('.png')}", highlight=False)


@bench_app.command("brokers")
def bench_brokers(
    brokers: Annotated[str, typer.Option(
        help="Brokers to compare, comma-separated; kafka:3 is a three-node cluster (replication factor 3).")
    ] = "kafka,noida",
    rates: Annotated[str, typer.Option(help="Offered rates for the full path and the baseline.")] = "100,1000,5000",
    duration: Annotated[float, typer.Option(min=0.5, help="Seconds per rate.")] = 3.0,
    idle_seconds: Annotated[float, typer.Option(min=1.0, help="Seconds of idle CPU measured.")] = 10.0,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON goes.")] = Path("bench-results"),
) -> None:
    """The brokers side by side: up to first ack, idle CPU, RSS, both paths per rate, acked events lost to kill -9."""
    from labkit.bench.brokers import measure_broker
    from labkit.bench.report import brokers_table, write_brokers

    offered, results = _numbers(rates, "--rates"), []
    for name in (name.strip() for name in brokers.split(",") if name.strip()):
        with err.status(f"measuring {name}: up, {len(offered)} rates on two paths, idle, kill -9"):
            try:
                results.append(asyncio.run(measure_broker(name, offered, duration, idle_seconds)))
            except LabkitError as exc:  # one broker that cannot run must not cost the others' figures
                err.print(f"[red]{name}: {exc}[/]")
    if not results:
        raise typer.Exit(1)
    out.print(brokers_table(results))
    out.print(f"results: {write_brokers(results, out_dir)}", highlight=False)


BrokerOption = Annotated[str | None, typer.Option(help="Broker of the fresh stack: kafka, noida or tansu.")]
UseRunning = Annotated[bool, typer.Option(help="Use the stack `labkit up` started instead of a fresh one.")]
OutDir = Annotated[Path, typer.Option(help="Where the JSON and the plot go.")]


def _long_run(use_running: bool, broker: str | None, out_dir: Path, run: Callable[..., Awaitable[Any]]) -> None:
    """An endurance or soak phase: its tables, its JSON and plot; exit 1 when it missed its goal."""
    from labkit.bench.report import long_run_report, write_long_run

    broker, phase = _on_a_stack(use_running, broker, run)
    long_run_report(phase, broker, out)
    for path in write_long_run(phase, out_dir, broker):
        out.print(f"wrote {path}")
    if not phase.passed:
        raise typer.Exit(1)


@bench_app.command("endurance")
def bench_endurance(
    events: Annotated[int, typer.Option(min=100, help="Events to send, one per frame.")] = 50_000,
    rate: Annotated[float, typer.Option(
        min=1, max=2000, help="Events (frames) per second through the gateway.")] = 1000.0,
    window: Annotated[int, typer.Option(min=10, help="Events per latency window.")] = 5_000,
    broker: BrokerOption = None,
    use_running: UseRunning = False,
    out_dir: OutDir = Path("bench-results"),
) -> None:
    """One event per frame through the gateway for EVENTS events: latency per window, broker memory and CPU."""
    from labkit.bench.runner import run_endurance

    _long_run(use_running, broker, out_dir, lambda stack, hook: run_endurance(stack, events, rate, window, hook))


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[float, typer.Option(min=0.05, help="How long to run.")] = 10.0,
    rate: Annotated[float, typer.Option(min=1, help="Events per second through the gateway.")] = 200.0,
    watchers: Annotated[int, typer.Option(min=1, max=100)] = 2,
    sample_every: Annotated[float, typer.Option(min=0.5, help="Seconds between memory samples.")] = 10.0,
    use_running: UseRunning = False,
    out_dir: OutDir = Path("bench-results"),
) -> None:
    """Steady load for MINUTES: losses per watcher and each component's memory over time."""
    from labkit.bench.runner import run_soak

    _long_run(use_running, None, out_dir,
              lambda stack, hook: run_soak(stack, minutes, rate, watchers, sample_every, hook))


@bench_app.command("idle")
def bench_idle(
    seconds: Annotated[float, typer.Option(min=1, max=600, help="How long to measure.")] = 30.0,
    settle: Annotated[float, typer.Option(min=0, max=600, help="Seconds to let start-up work end first "
                                                                "(a fresh stack's JVM compiles for a minute).")] = 60.0,
    broker: BrokerOption = None,
    use_running: UseRunning = False,
) -> None:
    """CPU of each component with the stack up and no traffic.

    Goal: broker, producer and consumer under 2% of one core.
    """
    from labkit.bench.report import idle_table
    from labkit.bench.runner import IDLE_GOAL, IDLE_PARTS, idle_of_the_goal, run_idle

    async def idle(stack: Stack, on_progress: ProgressHook) -> dict[str, float]:
        wait = 0.0 if use_running else settle
        on_progress(f"letting the stack settle for {wait:g} s, then measuring idle CPU for {seconds:g} s", None, 0)
        return await asyncio.to_thread(run_idle, stack, seconds, wait)

    broker, cores = _on_a_stack(use_running, broker, idle)
    out.print(idle_table(cores, seconds, broker))
    counted = idle_of_the_goal(cores)
    verdict = "[green]under[/]" if counted < IDLE_GOAL else "[red]over[/]"
    out.print(f"{' + '.join(IDLE_PARTS)}: {counted * 100:.2f}% of one core, {verdict} the {IDLE_GOAL:.0%} goal")
    if counted >= IDLE_GOAL:
        raise typer.Exit(1)
