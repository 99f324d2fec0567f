"""The result in the terminal: rich tables of latency, hops, resources, fan-out, ratios, and the goals last."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from labkit.bench.results import BenchResult
from labkit.bench.stats import HOPS, Latency, PhaseResult

__all__ = ["print_report"]

COMPONENTS = ("broker", "producer", "consumer", "gateway", "bench sender", "bench watchers", "other processes")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _mark(ok: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]-[/]"}[ok]


def _lost(result: PhaseResult) -> str:
    text = str(result.lost)
    if result.refused:
        text += " (refused " + ", ".join(f"{code} {n}" for code, n in result.refused.items()) + ")"
    if result.closed:
        text += f" ({len(result.closed)} closed)"
    return f"[red]{text}[/]" if result.lost or result.refused or result.closed else text


def latency_table(result: BenchResult) -> Table:
    table = Table(title="Latency, from each event's scheduled send time to its arrival (ms)")
    for name in ("path", "phase", "offered ev/s", "ev/frame", "throughput", "p50", "p99", "p99.9", "max", "ack p99",
                 "send lag", "lost", "carried"):
        table.add_column(name, justify="left" if name in ("path", "phase", "lost") else "right")
    for r in sorted((p for p in result.phases if p.phase in ("fixed", "ramp")), key=lambda p: (p.path, p.offered_rate)):
        lat = r.latency
        per_frame = f"{r.sent / r.frames_sent:.1f}" if r.frames_sent else "-"
        table.add_row(r.path, r.phase, f"{r.offered_rate:,.0f}", per_frame, f"{r.throughput:,.0f}", _ms(lat.p50), _ms(lat.p99),
                      _ms(lat.p999), _ms(lat.max), _ms(r.ack_latency.p99), _ms(r.send_lag_mean_ms), _lost(r),
                      _mark(r.carried))
    return table


def hops_table(result: BenchResult) -> Table:
    table = Table(title="Hops, p50 / p99 (ms): where the time goes (first watcher; CreateTime is whole ms)")
    table.add_column("path")
    table.add_column("offered ev/s", justify="right")
    for hop in HOPS:
        table.add_column(hop, justify="right")
    for r in sorted((p for p in result.phases if p.phase == "fixed"), key=lambda p: (p.path, p.offered_rate)):
        cells = []
        for hop in HOPS:
            lat: Latency | None = r.hops.get(hop)
            cells.append("-" if lat is None or lat.count == 0 else f"{_ms(lat.p50)} / {_ms(lat.p99)}")
        table.add_row(r.path, f"{r.offered_rate:,.0f}", *cells)
    return table


def _phase_label(r: PhaseResult) -> str:
    label = f"{r.offered_rate:,.0f}"
    if r.phase in ("fanout", "consumers"):
        label += f" x{r.watchers}" + (f" on {r.consumers}" if r.phase == "consumers" else "")
    return label


def _by_component(result: BenchResult, title: str, middle: str, cell: Callable[[PhaseResult, str], str],
                  middle_cell: Callable[[PhaseResult], str]) -> Table:
    """One row per phase, one column per component present; ``cell`` fills each component's cell."""
    table = Table(title=title)
    for name in ("path", "phase", "ev/s"):
        table.add_column(name, justify="right" if name == "ev/s" else "left")
    table.add_column(middle, justify="right")
    present = [c for c in COMPONENTS if any(c in p.resources for p in result.phases)]
    for name in present:
        table.add_column(name, justify="right")
    for r in result.phases:
        table.add_row(r.path, r.phase, _phase_label(r), middle_cell(r),
                      *(cell(r, n) if n in r.resources else "-" for n in present))
    return table


def cpu_table(result: BenchResult) -> Table:
    """Where the machine's CPU went: cores kept busy, and CPU per delivered event, by component."""

    def cell(r: PhaseResult, name: str) -> str:
        return f"{r.cores()[name]:.2f} / {r.cpu_us_per_delivery().get(name, 0):,.1f}"

    return _by_component(result, "CPU: cores kept busy (CPU s / wall s) / µs of CPU per event delivered to one watcher, "
                         "by component", "machine cores", cell, lambda r: f"{sum(r.cores().values()):.2f}")


def resources_table(result: BenchResult) -> Table:
    def cell(r: PhaseResult, name: str) -> str:
        figures = r.resources[name]
        rss = f" / {figures['peak_rss_mb']:.0f}" if figures["peak_rss_mb"] else ""
        return f"{figures['cpu_s']:.2f}{rss}"

    return _by_component(result, "CPU seconds / peak RSS (MB) per phase and component ('other processes': the rest of "
                         "the machine)", "wall s", cell, lambda r: f"{r.elapsed_s:.1f}")


def fanout_table(result: BenchResult) -> Table:
    table = Table(title="Fan-out (ms from scheduled send to arrival, all watchers): through the gateway, and N consumer "
                  "processes with watchers on their own ports")
    for name in ("path", "watchers", "consumers", "ev/s", "frames/s", "p50", "p99", "p99.9", "max", "lost",
                 "watchers with loss", "consumer cpu s", "gateway cpu s", "watchers cpu s"):
        table.add_column(name, justify="left" if name == "path" else "right")
    for r in (p for p in result.phases if p.phase in ("fanout", "consumers")):
        cpu = [r.resources.get(name, {}).get("cpu_s") for name in ("consumer", "gateway", "bench watchers")]
        table.add_row(
            r.path, f"{r.watchers:,}", str(r.consumers), f"{r.offered_rate:,.0f}", f"{r.frames_per_s:,.0f}",
            _ms(r.latency.p50), _ms(r.latency.p99), _ms(r.latency.p999), _ms(r.latency.max), _lost(r),
            str(r.watchers_with_loss), *map(_ms, cpu),
        )
    return table


def ratios_table(result: BenchResult) -> Table:
    table = Table(title="Latency ratios against the Kafka-only baseline (same rate)")
    columns = ("full/baseline p50", "full/baseline p99", "direct/baseline p50", "direct/baseline p99")
    table.add_column("ev/s", justify="right")
    for name in columns:
        table.add_column(name, justify="right")
    for row in result.ratios:
        table.add_row(f"{row['rate']:,.0f}", *(("-" if row.get(c) is None else f"{row[c]:.2f}x") for c in columns))
    return table


def ramps_table(result: BenchResult) -> Table:
    table = Table(title="Ramp (step search): the highest offered rate carried (nothing lost, p99 under the limit)")
    for name in ("path", "max ev/s carried", "steps tried (ev/s)", "stopped"):
        table.add_column(name)
    for path, ramp in result.ramps.items():
        steps = ", ".join(f"{s:,.0f}" for s in ramp["steps"])
        table.add_row(path, f"{ramp['max_rate_carried']:,.0f}", steps, ramp["stopped_because"])
    return table


def goals_table(result: BenchResult) -> Table:
    table = Table(title=f"Goals (run of {result.started}; baseline: the Kafka-only path, same run)")
    for name in ("measure", "goal", "measured", "met", "baseline (ratio measured/baseline)",
                 "CPU: machine cores busy; µs per event delivered, by component"):
        table.add_column(name)
    for check in result.goals:
        table.add_row(check.name, check.goal, check.measured, _mark(check.met), check.baseline or "-", check.cpu or "-")
    return table


def scale_out_lines(result: BenchResult) -> list[str]:
    """The largest fan-out on 1 and on N consumer processes: what more cores would carry."""
    runs = sorted((p for p in result.phases if p.phase == "consumers"), key=lambda p: p.consumers)
    if len(runs) < 2:
        return []
    one = runs[0]
    lines = []
    for other in runs[1:]:
        lines.append(
            f"{other.watchers:,} watchers x {other.offered_rate:,.0f} ev/s on {other.consumers} consumer processes "
            f"against {one.consumers} (watchers through the gateway): p99 {_ms(other.latency.p99)} against "
            f"{_ms(one.latency.p99)} ms, lost {other.lost} against {one.lost}; consumer CPU "
            f"{other.cores().get('consumer', 0):.2f} against {one.cores().get('consumer', 0):.2f} cores"
        )
    return lines


def profile_tables(result: BenchResult) -> list[Table]:
    """py-spy summaries of the highest fixed rate of each path (the JSON has every profiled phase)."""
    tables = []
    highest: dict[str, str] = {}
    for label in result.profiles:
        path, _, rate = label.partition(" @ ")
        if path not in highest or _rate(rate) > _rate(highest[path].partition(" @ ")[2]):
            highest[path] = label
    for path in highest.values():
        services = result.profiles[path]
        for service, summary in services.items():
            if "self_pct" not in summary:
                continue
            table = Table(title=f"py-spy: {service} during the {path} path ({summary['samples']} samples)")
            table.add_column("self %", justify="right")
            table.add_column("function (self)")
            table.add_column("total %", justify="right")
            table.add_column("labkit function (with what it calls)")
            rows = max(len(summary["self_pct"]), len(summary["total_pct"]))
            for i in range(rows):
                own = summary["self_pct"][i] if i < len(summary["self_pct"]) else ["", ""]
                total = summary["total_pct"][i] if i < len(summary["total_pct"]) else ["", ""]
                table.add_row(str(own[1]), own[0], str(total[1]), total[0])
            tables.append(table)
    return tables


def _rate(text: str) -> float:
    return float(text.split()[0].replace(",", "") or 0)


def print_report(result: BenchResult, console: Console) -> None:
    has = {p.phase for p in result.phases}
    if has & {"fixed", "ramp"}:
        console.print(latency_table(result))
        console.print(hops_table(result))
    if result.ratios:
        console.print(ratios_table(result))
    if result.ramps:
        console.print(ramps_table(result))
    if has & {"fanout", "consumers"}:
        console.print(fanout_table(result))
    console.print(resources_table(result))
    console.print(cpu_table(result))
    for table in profile_tables(result):
        console.print(table)
    for note in result.notes:
        console.print(f"[dim]note:[/] {note}", highlight=False)
    console.print(goals_table(result))
    for line in scale_out_lines(result):
        console.print(f"scale-out: {line}", highlight=False)
