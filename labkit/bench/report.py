"""The result in the terminal: rich tables of latency, hops, resources, fan-out, ratios, targets."""

from __future__ import annotations

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
    for name in ("path", "phase", "offered ev/s", "throughput", "p50", "p99", "p99.9", "max", "ack p99", "send lag",
                 "lost", "carried"):
        table.add_column(name, justify="left" if name in ("path", "phase", "lost") else "right")
    for r in sorted((p for p in result.phases if p.phase != "fanout"), key=lambda p: (p.path, p.offered_rate)):
        lat = r.latency
        table.add_row(r.path, r.phase, f"{r.offered_rate:,.0f}", f"{r.throughput:,.0f}", _ms(lat.p50), _ms(lat.p99),
                      _ms(lat.p999), _ms(lat.max), _ms(r.ack_latency.p99), _ms(r.send_lag_mean_ms), _lost(r),
                      _mark(r.carried))
    return table


def cpu_table(result: BenchResult) -> Table:
    """Where the machine's CPU went: cores kept busy, and CPU per delivered event, by component."""
    table = Table(title="CPU: cores kept busy (CPU s / wall s) and µs of CPU per delivered event, by component")
    table.add_column("path")
    table.add_column("phase")
    table.add_column("ev/s", justify="right")
    table.add_column("machine cores", justify="right")
    present = [c for c in COMPONENTS if any(c in p.resources for p in result.phases)]
    for name in present:
        table.add_column(name, justify="right")
    for r in result.phases:
        cores, per_event = r.cores(), r.cpu_us_per_delivery()
        label = f"{r.offered_rate:,.0f}" + (f" x{r.watchers}" if r.phase == "fanout" else "")
        cells = [f"{cores[n]:.2f} / {per_event.get(n, 0):,.0f}" if n in cores else "-" for n in present]
        table.add_row(r.path, r.phase, label, f"{sum(cores.values()):.2f}", *cells)
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


def resources_table(result: BenchResult) -> Table:
    table = Table(title="CPU seconds / peak RSS (MB) per phase and component ('other processes': the rest of the machine)")
    table.add_column("path")
    table.add_column("phase")
    table.add_column("ev/s", justify="right")
    table.add_column("wall s", justify="right")
    present = [c for c in COMPONENTS if any(c in p.resources for p in result.phases)]
    for name in present:
        table.add_column(name, justify="right")
    for r in result.phases:
        label = f"{r.offered_rate:,.0f}" + (f" x{r.watchers}" if r.phase == "fanout" else "")
        cells = []
        for name in present:
            figures = r.resources.get(name)
            if figures is None:
                cells.append("-")
            elif not figures["peak_rss_mb"]:
                cells.append(f"{figures['cpu_s']:.2f}")
            else:
                cells.append(f"{figures['cpu_s']:.2f} / {figures['peak_rss_mb']:.0f}")
        table.add_row(r.path, r.phase, label, f"{r.elapsed_s:.1f}", *cells)
    return table


def fanout_table(result: BenchResult) -> Table:
    table = Table(title="Fan-out through the gateway (ms from scheduled send to arrival, all watchers)")
    for name in ("watchers", "ev/s", "frames/s", "p50", "p99", "p99.9", "max", "lost", "watchers with loss",
                 "consumer cpu s", "gateway cpu s", "watchers cpu s"):
        table.add_column(name, justify="right")
    for r in (p for p in result.phases if p.phase == "fanout"):
        cpu = {name: r.resources.get(name, {}).get("cpu_s") for name in ("consumer", "gateway", "bench watchers")}
        table.add_row(
            f"{r.watchers:,}", f"{r.offered_rate:,.0f}", f"{r.frames_per_s:,.0f}", _ms(r.latency.p50), _ms(r.latency.p99),
            _ms(r.latency.p999), _ms(r.latency.max), _lost(r), str(r.watchers_with_loss),
            *(_ms(cpu[name]) for name in ("consumer", "gateway", "bench watchers")),
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
    table = Table(title="Ramp: the highest offered rate carried (nothing lost, p99 under the limit)")
    for name in ("path", "max ev/s carried", "steps tried (ev/s)", "stopped"):
        table.add_column(name)
    for path, ramp in result.ramps.items():
        steps = ", ".join(f"{s:,.0f}" for s in ramp["steps"])
        table.add_row(path, f"{ramp['max_rate_carried']:,.0f}", steps, ramp["stopped_because"])
    return table


def targets_table(result: BenchResult) -> Table:
    table = Table(title="Targets")
    for name in ("target", "wanted", "measured", "met"):
        table.add_column(name)
    for check in result.targets:
        table.add_row(check.name, check.target, check.measured, _mark(check.met))
    return table


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
    if "fanout" in has:
        console.print(fanout_table(result))
    console.print(resources_table(result))
    console.print(cpu_table(result))
    for table in profile_tables(result):
        console.print(table)
    console.print(targets_table(result))
    for note in result.notes:
        console.print(f"[dim]note:[/] {note}", highlight=False)
