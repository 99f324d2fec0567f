"""The result as a picture: latency percentiles against offered rate for each path, and fan-out; a long phase's
latency and memory over its run.

Written as a self-contained plotly HTML file (plotly.js inline, so it opens
offline), and as PNG by screenshotting that file in Chromium through Playwright
when ``/usr/bin/chromium`` (or ``LABKIT_CHROMIUM``) is there; kaleido is not needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.bench.config import BASELINE, DIRECT, FULL
from labkit.bench.runner import BenchResult
from labkit.bench.stats import PhaseResult

__all__ = ["write_plot", "render_png", "long_run_figure"]

COLOURS = {BASELINE: "#636efa", DIRECT: "#00cc96", FULL: "#ef553b"}
PERCENTILES = (("p50", "solid"), ("p99", "dash"), ("p999", "dot"))
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync", "--disable-quic"]
WIDTH, HEIGHT = 1400, 600


def _percentile_lines(fig: go.Figure, runs: list[PhaseResult], x: str, name: str, colour: str, ok: str,
                      col: int) -> None:
    """p50, p99 and p99.9 of ``runs`` against their field ``x``; a run whose field ``ok`` is false marked x."""
    for point, dash in PERCENTILES:
        fig.add_trace(go.Scatter(
            x=[getattr(r, x) for r in runs], y=[getattr(r.latency, point) for r in runs], mode="lines+markers",
            name=f"{name} {point.replace('p999', 'p99.9')}", line={"color": colour, "dash": dash},
            marker={"symbol": ["circle" if getattr(r, ok) else "x" for r in runs], "size": 8}, legendgroup=name,
        ), row=1, col=col)


def figure(result: BenchResult) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], subplot_titles=(
        "Latency against offered rate (scheduled send -> watcher)", "Fan-out through the gateway"))
    for path in (BASELINE, DIRECT, FULL):
        runs = sorted((p for p in result.phases if p.path == path and p.phase in ("fixed", "ramp") and p.latency.count),
                      key=lambda p: p.offered_rate)
        if runs:
            _percentile_lines(fig, runs, "offered_rate", path, COLOURS[path], "carried", col=1)
    fan = sorted((p for p in result.phases if p.phase == "fanout" and p.latency.count), key=lambda p: p.watchers)
    if fan:
        _percentile_lines(fig, fan, "watchers", "fan-out", "#ab63fa", "clean", col=2)
    fig.update_xaxes(type="log", title_text="offered rate (events/s); x: not carried", row=1, col=1)
    fig.update_yaxes(type="log", title_text="latency (ms)", row=1, col=1)
    fig.update_xaxes(type="log", title_text="watchers", row=1, col=2)
    fig.update_yaxes(type="log", title_text="latency (ms)", row=1, col=2)
    machine = result.machine
    fig.update_layout(
        title=f"labkit bench {result.started}: {machine.get('cpus')} CPUs, {machine.get('cpu_model', '')}",
        width=WIDTH, height=HEIGHT, template="plotly_white",
    )
    return fig


def long_run_figure(phase: PhaseResult, broker: str) -> go.Figure:
    """Endurance: p50 and p99 per window with the broker's memory; soak: each component's memory over time."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if phase.phase == "endurance":
        x = [w.last + 1 for w in phase.windows]
        for name, y in (("p50", [w.p50_ms for w in phase.windows]), ("p99", [w.p99_ms for w in phase.windows])):
            fig.add_scatter(x=x, y=y, name=name, mode="lines+markers")
        fig.add_scatter(x=x, y=[w.broker_rss_mb for w in phase.windows], name="broker RSS (MB)", mode="lines+markers",
                        line={"dash": "dot"}, secondary_y=True)
        fig.update_layout(
            title=f"Endurance on {broker}: {phase.sent:,} events at {phase.offered_rate:g}/s, one per frame")
        fig.update_xaxes(title_text="events sent")
        fig.update_yaxes(title_text="latency (ms, log)", type="log", secondary_y=False)
        fig.update_yaxes(title_text="broker RSS (MB)", secondary_y=True)
        return fig
    memory = phase.memory
    for name in sorted({name for _, sizes in memory for name in sizes}):
        points = [(t, sizes[name]) for t, sizes in memory if name in sizes]
        fig.add_scatter(x=[t for t, _ in points], y=[mb for _, mb in points], name=name, mode="lines+markers")
    fig.update_layout(title=f"Resident memory during a {phase.duration_s / 60:g}-minute soak at {phase.offered_rate:g} "
                      "events/s", xaxis_title="seconds", yaxis_title="MB")
    return fig


def write_plot(result: BenchResult, html_path: Path) -> Path:
    figure(result).write_html(html_path, include_plotlyjs=True, full_html=True)
    return html_path


def render_png(html_path: Path, png_path: Path) -> str | None:
    """Screenshot the HTML plot; returns why not when there is no browser."""
    candidates = (os.environ.get("LABKIT_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser")
    browser_path = next((path for path in candidates if path and Path(path).exists()), None)
    if browser_path is None:
        return "no Chromium found (/usr/bin/chromium or LABKIT_CHROMIUM): the plot is HTML only"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "Playwright is not installed: the plot is HTML only"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH + 40, "height": HEIGHT + 40})
            page.goto(html_path.resolve().as_uri())
            page.wait_for_selector(".main-svg", timeout=30_000)
            page.locator(".plotly-graph-div").first.screenshot(path=str(png_path))
        finally:
            browser.close()
    return None

