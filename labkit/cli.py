"""The ``labkit`` command: run the stack, send events, watch them arrive.

Every command builds the one :class:`~labkit.settings.Settings` from its flags
and the ``LABKIT_*`` environment, and uses :class:`~labkit.ops.stack.Stack` and the
client API; nothing here knows more about the services than a user would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from contextlib import aclosing
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from labkit.bench.cli import bench_app
from labkit.client import Sender, SendError, as_event, watch
from labkit.discovery import running_settings
from labkit.errors import LabkitError
from labkit.events import Event, parse_json_object
from labkit.ops.base import LabStack
from labkit.ops.stack import open_stack
from labkit.pacing import Schedule, due_ranges
from labkit.settings import REPLICATED, Settings

app = typer.Typer(
    help="labkit: a lab for real-time event delivery (WebSocket -> Kafka -> WebSocket, behind a gateway).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

Port = Annotated[int | None, typer.Option(min=0, max=65535, show_default=False)]


def build_settings(**flags: Any) -> Settings:
    """Settings from the flags given (None: not given) over LABKIT_* and defaults."""
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems) from None


def status_table(stack: LabStack, cpu_sample_s: float = 0.0) -> Table:
    table = Table(title=f"labkit stack ({stack.settings.mode}, broker {stack.settings.broker}, state in "
                        f"{stack.state_dir})",
                  caption=f"broker: {stack.broker_choice}")
    rows = stack.status(cpu_sample_s)
    with_cpu = any("cpu" in row for row in rows)
    for column in ("component", "state", "pid", "url", *(["cpu (cores)"] if with_cpu else []), "detail"):
        table.add_column(column)
    colours = {"running": "green", "stopped": "red"}
    for row in rows:
        colour = colours.get(row["state"], "yellow")
        cpu = [f"{row['cpu']:.3f}" if row.get("cpu") is not None else "-"] if with_cpu else []
        table.add_row(row["component"], f"[{colour}]{row['state']}[/]", str(row["pid"] or "-"), row["url"], *cpu,
                      row.get("detail", ""))
    return table


def partitions_table(stack: LabStack) -> Table:
    """Per partition: leader, replicas, in-sync replicas; under-replicated ones in red."""
    rows = stack.partitions()
    up = rows[0]["brokers_up"] if rows else []
    table = Table(title=f"topic {stack.settings.topic!r}: brokers answering {up or 'none'}")
    for column in ("partition", "leader", "replicas", "in sync", ""):
        table.add_column(column)
    for row in rows:
        short = row["under_replicated"]
        table.add_row(str(row["partition"]), str(row["leader"]) if row["leader"] >= 0 else "[red]none[/]",
                      ", ".join(map(str, row["replicas"])), ", ".join(map(str, row["in_sync"])),
                      "[red]under-replicated[/]" if short else "[green]fully replicated[/]")
    return table


@contextlib.contextmanager
def step_progress(first: str):
    """A rich progress line on stderr for ``on_step`` callbacks (starting and stopping stacks); yields the callback."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(first, total=None)

        def on_step(text: str, step: int, steps: int) -> None:
            progress.update(task, description=text, completed=step - 1, total=steps)
            if not err.is_terminal:  # a pipe or a log file gets one line a step instead of a redrawn bar
                err.print(f"{step}/{steps} {text}", highlight=False)

        yield on_step


def _run_up(stack: LabStack, restart: bool = False) -> None:
    if not restart and stack.adopt():
        out.print("[yellow]The stack is already running; nothing to start.[/]")
        out.print(status_table(stack))
        return
    began = time.monotonic()
    with step_progress("stopping" if restart else "starting") as on_step:
        (stack.restart if restart else stack.up)(on_step)
    for action in stack.actions:
        out.print(f"  {action}", highlight=False)
    out.print(status_table(stack))
    ready_ms = stack.ready_ms
    through = f" (a probe event went through end to end in {ready_ms:.0f} ms)" if ready_ms is not None else ""
    out.print(f"Ready in {time.monotonic() - began:.1f} s{through}. Try: [bold]labkit watch[/] in one terminal, "
              "[bold]labkit send --type click --value 1[/] in another; [bold]labkit down[/] stops it all.")


@app.command()
def up(
    mode: Annotated[str | None, typer.Option(help="embedded (default), compose or external.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind and connect to.")] = None,
    producer_port: Port = None,
    consumer_port: Port = None,
    gateway_port: Port = None,
    kafka_port: Port = None,
    kafka_controller_port: Port = None,
    broker: Annotated[str | None, typer.Option(
        help="kafka (Apache Kafka, a local JVM), noida or tansu; default auto: kafka where Java 17+ runs, else noida. "
             "External with --kafka.")] = None,
    nodes: Annotated[int | None,
                     typer.Option(help="Apache Kafka nodes: 1, or 3 for replication (--broker kafka).")] = None,
    kafka: Annotated[str | None,
                     typer.Option(help="Bootstrap servers of an existing Kafka cluster (HOST:PORT[,...]).")] = None,
    kafka_config: Annotated[
        Path | None,
        typer.Option(help="librdkafka properties file (key=value lines) for the cluster: SASL, SSL.", exists=True,
                     dir_okay=False),
    ] = None,
    topic: Annotated[str | None, typer.Option()] = None,
    partitions: Annotated[int | None, typer.Option(min=1)] = None,
    producers: Annotated[int | None,
                         typer.Option(help="Producer processes behind the gateway (ports up from "
                                           "--producer-port).")] = None,
    consumers: Annotated[int | None,
                         typer.Option(help="Consumer processes behind the gateway (ports down from "
                                           "--consumer-port).")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Folder for logs, pids and the stack record.")] = None,
) -> None:
    """Start broker, producer, consumer and gateway; return with them running in the background.

    With --kafka, the services run against an existing cluster instead of the embedded broker.
    """
    settings = build_settings(
        mode=mode or ("external" if kafka else None), host=host, producer_port=producer_port,
        consumer_port=consumer_port, gateway_port=gateway_port, kafka_port=kafka_port, kafka_bootstrap=kafka,
        broker=broker, kafka_controller_port=kafka_controller_port, kafka_nodes=nodes,
        kafka_properties=_read_properties(kafka_config) if kafka_config else None,
        topic=topic, partitions=partitions, producers=producers, consumers=consumers, state_dir=state_dir,
    )
    _run_up(open_stack(settings))


def _read_properties(path: Path) -> dict[str, str]:
    """A librdkafka/Java-style properties file: key=value lines, # comments."""
    properties = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"line {number} of {path} is not key=value", param_hint="--kafka-config")
        properties[key.strip()] = value.strip()
    return properties


@app.command()
def restart(state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Stop the stack and start it again with the same settings."""
    stack = open_stack(build_settings(state_dir=state_dir))
    stack.adopt()  # restart with the settings the running stack was started with
    if (warning := stack.restart_warning()) is not None:
        err.print(f"[yellow]{warning}[/]")
    _run_up(stack, restart=True)


@app.command()
def down(state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Stop exactly the processes `labkit up` started."""
    stack = open_stack(build_settings(state_dir=state_dir))
    began = time.monotonic()
    with step_progress("stopping") as on_step:
        stopped = stack.down(on_step)
    took = f" in {time.monotonic() - began:.1f} s"
    out.print(f"Stopped: {', '.join(stopped)}{took}." if stopped else "Nothing was running.")


@app.command()
def status(
    state_dir: Annotated[Path | None, typer.Option()] = None,
    cpu_sample: Annotated[float, typer.Option(min=0, max=60,
                                              help="Seconds over which to measure each component's CPU "
                                                   "(0: skip).")] = 1.0,
) -> None:
    """Show each component, whether it answers, its URL, the CPU it uses, and which broker runs."""
    stack = open_stack(build_settings(state_dir=state_dir))
    running = stack.adopt()  # the running stack's own settings: its broker, partitions and addresses
    out.print(status_table(stack, cpu_sample))
    if stack.settings.broker == "kafka" and running:
        out.print(partitions_table(stack))
    if running:
        for name in [name for service in REPLICATED for name, _ in stack.settings.replicas(service)]:
            try:
                out.print(f"{name}: {json.dumps(stack.health(name))}", highlight=False)
            except OSError as exc:
                out.print(f"{name}: no health answer ({exc})")


@app.command()
def logs(
    component: Annotated[str | None,
                         typer.Argument(help="broker, producer, consumer or gateway; all when omitted.")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1)] = 40,
    state_dir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Print the end of the components' logs."""
    stack = open_stack(build_settings(state_dir=state_dir))
    try:
        text = stack.logs(component, lines)
    except LabkitError as exc:
        raise typer.BadParameter(str(exc), param_hint="COMPONENT") from None
    out.print(text, highlight=False, markup=False)


def _parse_data(data: str | None) -> dict[str, Any] | None:
    try:
        return parse_json_object(data)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None


def _stdin_events() -> list[dict[str, Any]]:
    events = []
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            events.append(msgspec.to_builtins(msgspec.json.decode(line, type=Event)))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise typer.BadParameter(f"line {number} of stdin is not a valid event: {exc}",
                                     param_hint="stdin") from None
    return events


def _generated(kind: str, count: int) -> list[dict[str, Any]]:
    return [{"type": kind, "value": float(i % 100), "key": f"{kind}-{i % 8}"} for i in range(count)]


async def _send(settings: Settings, events: list[dict[str, Any]], rate: float | None, quiet: bool) -> tuple[int, int]:
    ok = failed = 0
    async with Sender(settings=settings) as sender:
        futures = []
        with Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                      disable=len(events) < 2) as progress:
            task = progress.add_task("send", total=len(events))
            if rate:
                async with aclosing(due_ranges(Schedule.from_now(rate, len(events)))) as ranges:
                    async for first, end in ranges:
                        futures += await sender.submit(events[first:end])
                        progress.update(task, completed=end)
            else:
                for event in events:
                    futures += await sender.submit([event])
                    progress.advance(task)
        replies = await sender.replies(futures, raise_on_error=False)
    for reply in replies:
        if reply.ok:
            ok += 1
        else:
            failed += 1
        if not quiet or not reply.ok:
            out.print(msgspec.json.encode(reply).decode(), highlight=False, soft_wrap=True)
    return ok, failed


@app.command()
def send(
    type: Annotated[str | None, typer.Option("--type", "-t", help="Event type (one event from flags).")] = None,
    value: Annotated[float | None, typer.Option("--value", "-v", help="Event value.")] = None,
    key: Annotated[str | None, typer.Option(help="Kafka key (default: the type).")] = None,
    data: Annotated[str | None, typer.Option(help="JSON object attached to the event.")] = None,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Send this many generated events.")] = None,
    rate: Annotated[float | None, typer.Option(min=0.001, help="Events per second for generated events.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and the summary.")] = False,
    state_dir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Send events through the gateway and print Kafka's acks.

    One event from --type/--value, COUNT generated events with --count (and --rate),
    or JSON lines from stdin when neither is given.
    """
    if count is not None:
        events = _generated(type or "tick", count)
    elif type is not None:
        if value is None:
            raise typer.BadParameter("give --value with --type", param_hint="--value")
        event: dict[str, Any] = {"type": type, "value": int(value) if value.is_integer() else value}
        if key is not None:
            event["key"] = key
        if (parsed := _parse_data(data)) is not None:
            event["data"] = parsed
        events = [event]
    elif not sys.stdin.isatty():
        events = _stdin_events()
        if not events:
            raise typer.BadParameter("stdin held no event: one JSON object per line", param_hint="stdin")
    else:
        raise typer.BadParameter("give --type and --value, --count N, or JSON lines on stdin")
    for number, event in enumerate(events, 1):
        try:
            as_event(event)
        except ValueError as exc:
            where = "the event" if len(events) == 1 else f"event {number}"
            raise typer.BadParameter(f"{where} is not valid: {exc}") from None
    settings = running_settings(build_settings(state_dir=state_dir))
    ok, failed = asyncio.run(_send(settings, events, rate, quiet))
    if len(events) > 1 or failed:
        err.print(f"{ok} acknowledged, {failed} refused")
    if failed:
        raise typer.Exit(1)


@app.command("watch")
def watch_command(
    types: Annotated[str | None, typer.Option(help="Only these event types, comma-separated.")] = None,
    replay: Annotated[int, typer.Option(min=0, help="First show up to N recent events.")] = 0,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Stop after N events.")] = None,
    state_dir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Print events as they arrive through the gateway, one JSON object per line."""
    settings = running_settings(build_settings(state_dir=state_dir))
    kinds = [t.strip() for t in types.split(",") if t.strip()] if types else None

    async def run() -> None:
        stream = watch(types=kinds, replay=replay, count=count, settings=settings)
        told: tuple[bool | None, str | None] = (None, None)
        async for event in stream:
            if (stream.recovered, stream.reason) != told:  # after a reconnection: say whether anything was lost
                told = (stream.recovered, stream.reason)
                if stream.recovered:
                    err.print("[green]resumed: nothing was missed[/]")
                else:
                    err.print(f"[yellow]resumed with a gap: {stream.reason}[/]", highlight=False)
            out.print(msgspec.json.encode(event).decode(), highlight=False, soft_wrap=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


gateway_app = typer.Typer(help="The gateway configured from kong/kong.yml.", no_args_is_help=True)
app.add_typer(gateway_app, name="gateway")


@gateway_app.command("reload")
def gateway_reload(state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Apply an edited kong/kong.yml without dropping open connections; a broken file is refused."""
    stack = open_stack(build_settings(state_dir=state_dir))
    stack.reload_gateway()
    out.print(f"Gateway reloaded from {stack.settings.kong_config}.")
    for row in stack.routes():
        out.print(f"  {', '.join(row['paths'])} -> {row['upstream']}  [{', '.join(row['plugins']) or 'no plugins'}]")


@gateway_app.command("routes")
def gateway_routes(state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Show the routes and plugins kong/kong.yml defines."""
    for row in open_stack(build_settings(state_dir=state_dir)).routes():
        out.print(f"{', '.join(row['paths'])} -> {row['upstream']}  [{', '.join(row['plugins']) or 'no plugins'}]")


app.add_typer(bench_app, name="bench")


@app.command(hidden=True)
def serve(component: Annotated[str, typer.Argument(help="producer or consumer")]) -> None:
    """Run one service in the foreground (what `labkit up` and the containers run)."""
    settings = build_settings()
    if component == "producer":
        from labkit.services.producer import main
    elif component == "consumer":
        from labkit.services.consumer import main
    else:
        raise typer.BadParameter("choose producer or consumer", param_hint="COMPONENT")
    main(settings)


def main() -> None:
    """Entry point: labkit's own errors and unreachable services become one clear line, not a traceback."""
    try:
        app()
    except (LabkitError, SendError) as exc:
        problem = str(exc)
    except OSError as exc:
        problem = f"{exc}. Is the stack running? Check with `labkit status`; start it with `labkit up`."
    else:
        return
    err.print(f"[bold red]error:[/] {problem}", highlight=False)
    sys.exit(1)
