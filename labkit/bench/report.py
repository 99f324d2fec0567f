"""What a run leaves behind: the JSON files, and the rich tables in the terminal (the plots are in :mod:`.plot`).

The bench's tables (latency, hops, ratios, ramps, fan-out, resources, CPU, py-spy, the goals last), and
those of the long phases (endurance windows, soak memory), the idle stack and the brokers side by side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from itertools import zip_longest
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from labkit.bench.brokers import BrokerFigures
from labkit.bench.runner import BenchResult
from labkit.bench.stats import HOPS, PhaseResult

__all__ = ["print_report", "write_json", "write_long_run", "long_run_report", "idle_table", "brokers_table"]

COMPONENTS = ("broker", "producer", "consumer", "gateway", "bench sender", "bench watchers", "other processes")
LEFT = ("path", "phase", "lost", "component", "figure", "measure", "goal", "measured", "met", "function", "baseline",
        "CPU: machine cores busy; µs per event delivered, by component", "steps tried", "stopped")


def _table(title: str, columns: Iterable[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich table: text columns (``LEFT``) to the left, figures to the right."""
    table = Table(title=title)
    for name in columns:
        table.add_column(name, justify="left" if name.split(" (")[0] in LEFT else "right")
    for row in rows:
        table.add_row(*map(str, row))
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _mark(ok: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]-[/]"}[ok]


def _lost(r: PhaseResult) -> str:
    text = str(r.lost) + (" (refused " + ", ".join(f"{code} {n}" for code, n in r.refused.items()) + ")"
                          if r.refused else "") + (f" ({len(r.closed)} closed)" if r.closed else "")
    return f"[red]{text}[/]" if r.lost or r.refused or r.closed else text


def _label(r: PhaseResult) -> str:
    return f"{r.offered_rate:,.0f}" + (f" x{r.watchers}" if r.phase in ("fanout", "consumers") else "") + \
        (f" on {r.consumers}" if r.phase == "consumers" else "")


def _by_component(result: BenchResult, title: str, middle: tuple[str, Any], cell: Any) -> Table:
    """One row per phase, one column per component present; ``cell(phase, component)`` fills each."""
    present = [c for c in COMPONENTS if any(c in p.resources for p in result.phases)]
    return _table(title, ("path", "phase", "ev/s", middle[0], *present),
                  ((r.path, r.phase, _label(r), middle[1](r),
                    *(cell(r, n) if n in r.resources else "-" for n in present))
                   for r in result.phases))


def _profile_tables(result: BenchResult) -> list[Table]:
    """py-spy summaries of the highest fixed rate of each path (the JSON has every profiled phase)."""
    def rate(label: str) -> float:  # "<path> @ <rate> ev/s"
        return float(label.split(" @ ")[1].split()[0].replace(",", ""))

    highest: dict[str, str] = {}
    for label in result.profiles:
        path = label.split(" @ ")[0]
        highest[path] = max(highest.get(path, label), label, key=rate)
    return [_table(f"py-spy: {service} during the {label} path ({summary['samples']} samples)",
                   ("self %", "function (self)", "total %", "function (labkit, with what it calls)"),
                   [(*own[::-1], *total[::-1])
                    for own, total in zip_longest(summary["self_pct"], summary["total_pct"], fillvalue=["", ""])])
            for label in highest.values() for service, summary in result.profiles[label].items()
            if "self_pct" in summary]


def print_report(result: BenchResult, console: Console) -> None:
    phases, has = result.phases, {p.phase for p in result.phases}
    rated = sorted((p for p in phases if p.phase in ("fixed", "ramp")), key=lambda p: (p.path, p.offered_rate))
    tables = []
    if rated:
        tables.append(_table(
            "Latency, from each event's scheduled send time to its arrival (ms)",
            ("path", "phase", "offered ev/s", "ev/frame", "throughput", "p50", "p99", "p99.9", "max", "ack p99",
             "send lag", "lost", "carried"),
            ((r.path, r.phase, f"{r.offered_rate:,.0f}", f"{r.sent / r.frames_sent:.1f}" if r.frames_sent else "-",
              f"{r.throughput:,.0f}", _ms(r.latency.p50), _ms(r.latency.p99), _ms(r.latency.p999), _ms(r.latency.max),
              _ms(r.ack_latency.p99), _ms(r.send_lag_mean_ms), _lost(r), _mark(r.carried)) for r in rated)))
        tables.append(_table(
            "Hops, p50 / p99 (ms): where the time goes (first watcher; CreateTime is whole ms)",
            ("path", "offered ev/s", *HOPS),
            ((r.path, f"{r.offered_rate:,.0f}", *(f"{_ms(r.hops[h].p50)} / {_ms(r.hops[h].p99)}"
                                                   if h in r.hops and r.hops[h].count else "-" for h in HOPS))
             for r in rated if r.phase == "fixed")))
    if result.ratios:
        columns = ("full/baseline p50", "full/baseline p99", "direct/baseline p50", "direct/baseline p99")
        tables.append(_table("Latency ratios against the Kafka-only baseline (same rate)", ("ev/s", *columns),
                             ((f"{row['rate']:,.0f}",
                               *("-" if row.get(c) is None else f"{row[c]:.2f}x" for c in columns))
                              for row in result.ratios)))
    if result.ramps:
        tables.append(_table(
            "Ramp (step search): the highest offered rate carried (nothing lost, p99 under the limit)",
            ("path", "max ev/s carried", "steps tried (ev/s)", "stopped"),
            ((path, f"{ramp['max_rate_carried']:,.0f}", ", ".join(f"{s:,.0f}" for s in ramp["steps"]),
              ramp["stopped_because"]) for path, ramp in result.ramps.items())))
    if has & {"fanout", "consumers"}:
        tables.append(_table(
            "Fan-out (ms from scheduled send to arrival, all watchers): through the gateway, and N consumer processes "
            "with watchers on their own ports",
            ("path", "watchers", "consumers", "ev/s", "frames/s", "p50", "p99", "p99.9", "max", "lost",
             "watchers with loss", "consumer cpu s", "gateway cpu s", "watchers cpu s"),
            ((r.path, f"{r.watchers:,}", r.consumers, f"{r.offered_rate:,.0f}", f"{r.frames_per_s:,.0f}",
              _ms(r.latency.p50), _ms(r.latency.p99), _ms(r.latency.p999), _ms(r.latency.max), _lost(r),
              r.watchers_with_loss, *(_ms(r.resources.get(n, {}).get("cpu_s")) for n in ("consumer", "gateway",
                                                                                          "bench watchers")))
             for r in phases if r.phase in ("fanout", "consumers"))))
    tables.append(_by_component(
        result, "CPU seconds / peak RSS (MB) per phase and component ('other processes': the rest of the machine)",
        ("wall s", lambda r: f"{r.elapsed_s:.1f}"), lambda r, n: f"{r.resources[n]['cpu_s']:.2f}" + (
            f" / {r.resources[n]['peak_rss_mb']:.0f}" if r.resources[n]["peak_rss_mb"] else "")))
    tables.append(_by_component(
        result, "CPU: cores kept busy (CPU s / wall s) / µs of CPU per event delivered to one watcher, by component",
        ("machine cores", lambda r: f"{sum(r.cores().values()):.2f}"),
        lambda r, n: f"{r.cores()[n]:.2f} / {r.cpu_us_per_delivery().get(n, 0):,.1f}"))
    for table in tables + _profile_tables(result):
        console.print(table)
    for note in result.notes:
        console.print(f"[dim]note:[/] {note}", highlight=False)
    console.print(_table(
        f"Goals (run of {result.started}; baseline: the Kafka-only path, same run)",
        ("measure", "goal", "measured", "met", "baseline (ratio measured/baseline)",
         "CPU: machine cores busy; µs per event delivered, by component"),
        ((c.name, c.goal, c.measured, _mark(c.met), c.baseline or "-", c.cpu or "-") for c in result.goals)))
    runs = sorted((p for p in phases if p.phase == "consumers"), key=lambda p: p.consumers)
    for other in runs[1:]:  # the largest fan-out on N consumer processes against 1: what more cores would carry
        one = runs[0]
        console.print(
            f"scale-out: {other.watchers:,} watchers x {other.offered_rate:,.0f} ev/s on {other.consumers} consumer "
            f"processes against {one.consumers} (watchers through the gateway): p99 {_ms(other.latency.p99)} against "
            f"{_ms(one.latency.p99)} ms, lost {other.lost} against {one.lost}; consumer CPU "
            f"{other.cores().get('consumer', 0):.2f} against {one.cores().get('consumer', 0):.2f} cores",
            highlight=False)


def _stamped(folder: Path, name: str, started: float | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"


def write_json(result: BenchResult, out_dir: Path, started: float) -> Path:
    """``bench-<time>.json``: the whole result, each phase with its cores and CPU per delivery."""
    path, data = _stamped(out_dir, "bench", started), msgspec.to_builtins(result)
    for phase, raw in zip(result.phases, data["phases"], strict=True):
        raw.update(cores=phase.cores(), cpu_us_per_delivery=phase.cpu_us_per_delivery())
    path.write_bytes(msgspec.json.format(msgspec.json.encode(data), indent=2))
    return path


def write_long_run(phase: PhaseResult, folder: Path, broker: str) -> tuple[Path, Path]:
    """An endurance or soak phase as JSON (``endurance-<broker>-<time>.json``, ``soak-<time>.json``) and its plot."""
    from labkit.bench.plot import long_run_figure  # plotly loads only when a plot is drawn

    path = _stamped(folder, f"endurance-{broker}" if phase.phase == "endurance" else "soak")
    data = {**msgspec.to_builtins(phase), "broker": broker, "memory": phase.memory, "p99_ratio": phase.p99_ratio,
            "passed": phase.passed, "memory_growth_mb": phase.memory_growth_mb()}
    path.write_text(json.dumps(data, indent=2))
    long_run_figure(phase, broker).write_html(path.with_suffix(".html"), include_plotlyjs=True)
    return path, path.with_suffix(".html")


def long_run_report(phase: PhaseResult, broker: str, console: Console) -> None:
    """Endurance: latency, broker memory and CPU per window; soak: each component's memory over time."""
    received = phase.delivered // max(phase.watchers, 1)
    if phase.phase == "endurance":
        console.print(_table(
            f"endurance on {broker}: {phase.sent:,} events at {phase.offered_rate:g}/s, one per frame",
            ("events", "p50 ms", "p99 ms", "max ms", "broker RSS MB", "broker CPU (cores)"),
            ((f"{w.first:,}-{w.last:,}", f"{w.p50_ms:.2f}", f"{w.p99_ms:.2f}", f"{w.max_ms:.1f}",
              f"{w.broker_rss_mb:.1f}", f"{w.broker_cpu_cores:.3f}") for w in phase.windows)))
        console.print(
            f"acknowledged {phase.acked:,}, refused {sum(phase.refused.values()):,}, received {received:,}, lost "
            f"{phase.lost:,}, duplicates {phase.duplicates:,}; last/first window p99 = {phase.p99_ratio} (goal <= 2, "
            f"nothing lost): {'[green]passed[/]' if phase.passed else '[red]failed[/]'}")
        return
    memory = phase.memory
    components = sorted(memory[-1][1]) if memory else []
    console.print(_table(
        f"soak: {phase.duration_s / 60:g} min at {phase.offered_rate:g} events/s, {phase.watchers} watchers",
        ("seconds", *(f"{name} MB" for name in components)),
        ((f"{seconds:g}", *(f"{sizes.get(name, 0):.1f}" for name in components)) for seconds, sizes in memory)))
    latency = {k: round(getattr(phase.latency, k), 2) for k in ("p50", "p99", "max")
               if getattr(phase.latency, k) is not None}
    console.print(
        f"sent {phase.sent:,}, acknowledged {phase.acked:,}, refused {sum(phase.refused.values()):,}; lost per watcher "
        f"{phase.lost_per_watcher}, duplicates {phase.duplicates_per_watcher}; latency {latency}; memory growth MB "
        f"{phase.memory_growth_mb()}")


def idle_table(cores: dict[str, float], seconds: float, broker: str) -> Table:
    total = sum(cores.values())
    return _table(f"idle CPU over {seconds:g} s, broker {broker}", ("component", "cores", "% of one core"),
                  [*((name, f"{used:.4f}", f"{used * 100:.1f}") for name, used in cores.items()),
                   ("[bold]total[/]", f"{total:.4f}", f"{total * 100:.1f}")])


def brokers_table(results: list[BrokerFigures]) -> Table:
    """Each broker a column: up, idle CPU and memory, each path's latency and CPU per event, the crash."""
    first = results[0]
    rows: list[tuple[str, ...]] = [
        ("up to first ack (s)", *(f"{f.up_s:.1f}" for f in results)),
        ("probe round trip (ms)", *(f"{f.first_ack_ms:.0f}" for f in results))]
    for component in first.idle_cores:
        rows.append((f"idle {component} (% core)", *(f"{f.idle_cores.get(component, 0) * 100:.2f}" for f in results)))
        rows.append((f"RSS {component} (MB)", *(f"{f.rss_mb.get(component, 0):.0f}" for f in results)))
    for i, entry in enumerate(first.paths):
        label = f"{entry['path']} {entry['rate']:g}/s"
        rows.append((f"{label} p50 / p99 (ms)",
                     *(f"{f.paths[i]['p50_ms']:.2f} / {f.paths[i]['p99_ms']:.2f}" for f in results)))
        rows += [(f"{label} µs CPU/event {component}",
                  *(f"{f.paths[i]['cpu_us_per_event'].get(component, 0):.0f}" for f in results))
                 for component in entry["cpu_us_per_event"]]
    rows.append(("kill -9: acked / lost / offsets reused", *(f"{f.crash_acked} / {f.crash_lost} / {f.crash_reused}"
                                                              for f in results)))
    return _table("brokers side by side (each part on a fresh stack)", ("figure", *(f.broker for f in results)), rows)


def write_brokers(results: list[BrokerFigures], out_dir: Path) -> Path:
    path = _stamped(out_dir, "brokers")
    path.write_text(json.dumps([asdict(f) for f in results], indent=2))
    return path
