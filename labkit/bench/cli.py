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
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from labkit.bench.config import BenchConfig
from labkit.discovery import running_settings
from labkit.errors import LabkitError
from labkit.ops.stack import Stack
from labkit.settings import Settings

if TYPE_CHECKING:
    from labkit.bench.results import LongRun

__all__ = ["bench_app"]

bench_app = typer.Typer(help="Benchmark the whole path against a Kafka-only baseline.", add_completion=False,
                        pretty_exceptions_enable=False)
out = Console(record=True)  # recorded: the tables are also saved as HTML beside the JSON
if not out.is_terminal:  # a file or a pipe: wide enough for the tables
    out = Console(width=170, record=True)
err = Console(stderr=True)


def _numbers(text: str, name: str, kind: type = float) -> tuple:
    try:
        values = tuple(kind(item.replace("_", "")) for item in text.split(",") if item.strip())
    except ValueError:
        raise typer.BadParameter(f"expected numbers separated by commas, e.g. 100,1000: got {text!r}", param_hint=name) from None
    if not values:
        raise typer.BadParameter("give at least one value", param_hint=name)
    return values


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    rates: Annotated[str, typer.Option(help="Fixed offered rates, events/s, comma-separated.")] = "100,1000,10000",
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds per fixed rate.")] = 3.0,
    paths: Annotated[str, typer.Option(help="Paths to measure: baseline, direct, full.")] = "baseline,direct,full",
    ramp: Annotated[bool, typer.Option(help="Ramp up to the highest rate carried with zero loss.")] = True,
    ramp_step: Annotated[float, typer.Option(min=1.0, help="The ramp's step up (ev/s), from the fixed rates.")] = 5_000.0,
    ramp_max: Annotated[float, typer.Option(help="Highest rate the ramp tries.")] = 100_000.0,
    ramp_p99_limit: Annotated[float, typer.Option(help="A ramp step is carried when p99 stays under this (ms).")] = 500.0,
    fanout: Annotated[str, typer.Option(help="Watcher counts for fan-out (gateway); 'none' to skip.")] = "1,10,100,1000",
    fanout_rate: Annotated[float, typer.Option(min=0.1)] = 100.0,
    fanout_duration: Annotated[float, typer.Option(min=0.1)] = 3.0,
    watcher_processes: Annotated[int, typer.Option(min=1, help="Processes the fan-out watchers are spread over.")] = 2,
    consumers: Annotated[str, typer.Option(
        help="Consumer process counts to compare at the largest fan-out size (e.g. 1,2); 'none' to skip.")] = "none",
    use_running: Annotated[bool, typer.Option(help="Measure the running stack instead of starting one.")] = False,
    state_dir: Annotated[Optional[Path], typer.Option(help="State folder of the running stack (--use-running).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON and the plot go.")] = Path("bench-results"),
    png: Annotated[bool, typer.Option(help="Also render the plot as PNG (needs Chromium).")] = True,
    profile: Annotated[bool, typer.Option(help="Record the services with py-spy and show what costs.")] = False,
    quick: Annotated[bool, typer.Option(help="A short low-rate run (1 s at 50 ev/s, 2 watchers).")] = False,
    goals: Annotated[bool, typer.Option(help="Exactly the goals table with its baseline (a few minutes).")] = False,
) -> None:
    """Measure baseline, direct and full paths side by side, then fan-out; write JSON and a plot."""
    if ctx.invoked_subcommand is not None:  # `labkit bench soak`: only the subcommand runs
        return
    from labkit.bench import run_bench

    config = BenchConfig(
        paths=tuple(p.strip() for p in paths.split(",") if p.strip()), rates=_numbers(rates, "--rates"),
        duration_s=duration, ramp=ramp, ramp_step=ramp_step, ramp_max_rate=ramp_max,
        ramp_p99_limit_ms=ramp_p99_limit,
        fanout=() if fanout.strip().lower() == "none" else _numbers(fanout, "--fanout", int),
        fanout_rate=fanout_rate, fanout_duration_s=fanout_duration, watcher_processes=watcher_processes,
        consumers=() if consumers.strip().lower() == "none" else _numbers(consumers, "--consumers", int),
        out_dir=out_dir, png=png, profile=profile,
    )
    if quick:
        config = BenchConfig.quick(out_dir, paths=config.paths, png=png, profile=profile)
    elif goals:
        config = BenchConfig.goals(out_dir, png=png, profile=profile)
    try:
        config.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = Settings(state_dir=state_dir) if state_dir is not None else None

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, refresh_per_second=4) as progress:
        planned = len(config.paths) * len(config.rates) + len(config.fanout) + len(config.consumers)
        overall = progress.add_task("phases", total=planned)
        current = progress.add_task("starting the stack", total=None)
        seen: set[str] = set()

        def on_stack_step(text: str, step: int, steps: int) -> None:
            progress.update(current, description=text, completed=step - 1, total=steps)

        def on_progress(label: str, total: int | None, done: int) -> None:
            base = label.split(":")[0]
            if base not in seen and not label.startswith(("fanout: starting", "consumers: starting")):
                seen.add(base)
                if len(seen) > 1:
                    progress.advance(overall)
                if len(seen) > (progress.tasks[overall].total or 0):
                    progress.update(overall, total=len(seen))
            progress.update(current, description=label, total=total, completed=done)

        result, files = run_bench(config, settings=settings, use_running=use_running, on_progress=on_progress,
                                  on_stack_step=on_stack_step)
        progress.update(overall, completed=progress.tasks[overall].total)

    from labkit.bench.plot import render_png, write_plot  # plotly loads only when a plot is drawn
    from labkit.bench.report import print_report

    print_report(result, out)
    tables = files["json"].with_name(files["json"].stem + "-tables.html")
    out.save_html(str(tables))
    html = write_plot(result, files["json"].with_suffix(".html"))
    out.print(f"results: {files['json']}\ntables: {tables}\nplot: {html}", highlight=False)
    if config.png:
        problem = render_png(html, html.with_suffix(".png"))
        out.print(f"note: {problem}" if problem else f"plot (PNG): {html.with_suffix('.png')}", highlight=False)



@bench_app.command("brokers")
def bench_brokers(
    brokers: Annotated[str, typer.Option(
        help="Brokers to compare, comma-separated; kafka:3 is a three-node cluster (replication factor 3).")] = "kafka,noida",
    rates: Annotated[str, typer.Option(help="Offered rates for the full path and the baseline.")] = "100,1000,5000",
    duration: Annotated[float, typer.Option(min=0.5, help="Seconds per rate.")] = 3.0,
    idle_seconds: Annotated[float, typer.Option(min=1.0, help="Seconds of idle CPU measured.")] = 10.0,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON goes.")] = Path("bench-results"),
) -> None:
    """The brokers side by side: up to first ack, idle CPU, RSS, both paths per rate, acked events lost to kill -9."""
    import json
    import time
    from dataclasses import asdict

    from rich.table import Table

    from labkit.bench.brokers import measure_broker
    from labkit.errors import LabkitError

    names = [name.strip() for name in brokers.split(",") if name.strip()]
    offered = _numbers(rates, "--rates")
    results = []
    for name in names:
        with err.status(f"measuring {name}: up, {len(offered)} rates on two paths, idle, kill -9"):
            try:
                results.append(measure_broker(name, offered, duration, idle_seconds))
            except LabkitError as exc:  # one broker that cannot run must not cost the others' figures
                err.print(f"[red]{name}: {exc}[/]")
    if not results:
        raise typer.Exit(1)
    table = Table(title="brokers side by side (each part on a fresh stack)")
    table.add_column("figure")
    for figures in results:
        table.add_column(figures.broker, justify="right")

    def row(label: str, values: list[str]) -> None:
        table.add_row(label, *values)

    row("up to first ack (s)", [f"{f.up_s:.1f}" for f in results])
    row("probe round trip (ms)", [f"{f.first_ack_ms:.0f}" for f in results])
    for component in results[0].idle_cores:
        row(f"idle {component} (% core)", [f"{f.idle_cores.get(component, 0) * 100:.2f}" for f in results])
        row(f"RSS {component} (MB)", [f"{f.rss_mb.get(component, 0):.0f}" for f in results])
    for i, entry in enumerate(results[0].paths):
        label = f"{entry['path']} {entry['rate']:g}/s"
        row(f"{label} p50 / p99 (ms)", [f"{f.paths[i]['p50_ms']:.2f} / {f.paths[i]['p99_ms']:.2f}" for f in results])
        for component in entry["cpu_us_per_event"]:
            row(f"{label} µs CPU/event {component}",
                [f"{f.paths[i]['cpu_us_per_event'].get(component, 0):.0f}" for f in results])
    row("kill -9: acked / lost / offsets reused", [f"{f.crash_acked} / {f.crash_lost} / {f.crash_reused}" for f in results])
    out.print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"brokers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps([asdict(f) for f in results], indent=2))
    out.print(f"results: {path}", highlight=False)


@contextlib.contextmanager
def _bench_stack(use_running: bool, broker: str | None, name: str) -> Iterator[Stack]:
    """The running stack, or a fresh one on free ports (stopped afterwards), for a long phase."""
    if use_running:
        stack = Stack(running_settings(Settings()))
        if not stack.adopt():
            raise LabkitError("no stack is running: start one with `labkit up`, or leave out --use-running")
        yield stack
        return
    given = {"broker": broker} if broker else {}
    settings = Settings(**given).with_free_ports(state_dir=Path(tempfile.mkdtemp(prefix=f"labkit-{name}-")))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"starting a {settings.broker} stack", total=None)
        stack = Stack(settings).up(lambda text, step, steps: bar.update(task, description=text, completed=step - 1,
                                                                         total=steps))
    try:
        yield stack
    finally:
        stack.down()


def _run_long(stack: Stack, title: str, run) -> LongRun:
    """A long phase with a progress bar of events sent."""
    with Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task("", total=None)

        def on_progress(label: str, total: int | None, done: int) -> None:
            progress.update(task, description=label.partition(": ")[2], total=total, completed=done)

        return asyncio.run(run(on_progress))


def _finish(result: LongRun, out_dir: Path) -> None:
    for path in result.write(out_dir):
        out.print(f"wrote {path}")
    if not result.passed:
        raise typer.Exit(1)


BrokerOption = Annotated[Optional[str], typer.Option(help="Broker of the fresh stack: kafka, noida or tansu.")]
UseRunning = Annotated[bool, typer.Option(help="Use the stack `labkit up` started instead of a fresh one.")]
OutDir = Annotated[Path, typer.Option(help="Where the JSON and the plot go.")]


@bench_app.command("endurance")
def bench_endurance(
    events: Annotated[int, typer.Option(min=100, help="Events to send, one per frame.")] = 50_000,
    rate: Annotated[float, typer.Option(min=1, max=2000, help="Events (frames) per second through the gateway.")] = 1000.0,
    window: Annotated[int, typer.Option(min=10, help="Events per latency window.")] = 5_000,
    broker: BrokerOption = None,
    use_running: UseRunning = False,
    out_dir: OutDir = Path("bench-results"),
) -> None:
    """One event per frame through the gateway for EVENTS events: latency per window, broker memory and CPU."""
    from labkit.bench import run_endurance

    with _bench_stack(use_running, broker, "endurance") as stack:
        result = _run_long(stack, "endurance", lambda hook: run_endurance(stack, events, rate, window, hook))
    table = Table(title=f"endurance on {result.broker}: {result.events:,} events at {result.rate:g}/s, one per frame")
    for column in ("events", "p50 ms", "p99 ms", "max ms", "broker RSS MB", "broker CPU (cores)"):
        table.add_column(column, justify="right")
    for w in result.windows:
        table.add_row(f"{w.first:,}-{w.last:,}", f"{w.p50_ms:.2f}", f"{w.p99_ms:.2f}", f"{w.max_ms:.1f}",
                      f"{w.broker_rss_mb:.1f}", f"{w.broker_cpu_cores:.3f}")
    out.print(table)
    verdict = "[green]passed[/]" if result.passed else "[red]failed[/]"
    out.print(f"acknowledged {result.acked:,}, refused {result.refused:,}, received {result.received:,}, "
              f"lost {result.lost:,}, duplicates {result.duplicates:,}; last/first window p99 = {result.p99_ratio} "
              f"(goal <= 2, nothing lost): {verdict}")
    _finish(result, out_dir)


@bench_app.command("idle")
def bench_idle(
    seconds: Annotated[float, typer.Option(min=1, max=600, help="How long to measure.")] = 30.0,
    broker: BrokerOption = None,
    use_running: UseRunning = False,
) -> None:
    """CPU of each component with the stack up and no traffic (goal: under 5% of one core in total)."""
    from labkit.bench import run_idle

    with _bench_stack(use_running, broker, "idle") as stack:
        with err.status(f"measuring idle CPU for {seconds:g} s"):
            cores = run_idle(stack, seconds)
        table = Table(title=f"idle CPU over {seconds:g} s, broker {stack.settings.broker}")
    table.add_column("component")
    table.add_column("cores", justify="right")
    table.add_column("% of one core", justify="right")
    for name, used in cores.items():
        table.add_row(name, f"{used:.4f}", f"{used * 100:.1f}")
    total = sum(cores.values())
    table.add_row("[bold]total[/]", f"{total:.4f}", f"{total * 100:.1f}")
    out.print(table)
    out.print("[green]under 5% of one core[/]" if total < 0.05 else "[red]over the 5% goal[/]")
    if total >= 0.05:
        raise typer.Exit(1)


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
    from labkit.bench import run_soak

    with _bench_stack(use_running, None, "soak") as stack:
        result = _run_long(stack, "soak", lambda hook: run_soak(stack, minutes, rate, watchers, sample_every, hook))
    table = Table(title=f"soak: {result.minutes:g} min at {result.rate:g} events/s, {result.watchers} watchers")
    components = sorted(result.memory[-1][1]) if result.memory else []
    table.add_column("seconds", justify="right")
    for name in components:
        table.add_column(f"{name} MB", justify="right")
    for seconds, sizes in result.memory:
        table.add_row(f"{seconds:g}", *(f"{sizes.get(name, 0):.1f}" for name in components))
    out.print(table)
    out.print(
        f"sent {result.sent:,}, acknowledged {result.acked:,}, refused {result.refused:,}; "
        f"lost per watcher {result.lost_per_watcher}, duplicates {result.duplicates_per_watcher}; "
        f"latency {result.latency_ms}; memory growth MB {result.memory_growth_mb()}"
    )
    _finish(result, out_dir)
