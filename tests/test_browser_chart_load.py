"""The live chart keeps up in a real browser at 1,000 events a second, pauses at once, and memory stays bounded.

A notebook in JupyterLab (Debian's Chromium, driven by Playwright) shows a LiveChart and
sends 1,000 events a second for 20 s from the same kernel with the form, as notebook 03
does. The page counts the frames the chart draws and the time spent drawing them
(``data-frames`` and ``data-draw-ms``, set by ``chart.js``). The test reads them over the
run (its first 2 s left out), clicks **Pause** and measures when the drawing stopped,
samples the resident memory of the JupyterLab server and of the kernel, and reads, in the
page, that both time panels show the same window and the counters the whole run's
percentiles beside the window's. Figures are printed (with the CPU each process used, to
see where the time goes) and a screenshot goes to ``test-artifacts/dashboard-load.png``.
"""

from __future__ import annotations

import time

import psutil
from browser_lab import ARTIFACTS, open_notebook, put_notebook, run_all
from playwright.sync_api import Browser, Page
from waiting import POLL_S

from labkit.procstats import cpu_seconds

NOTEBOOK = "chart_load.ipynb"
RATE, SECONDS = 1000, 20
WARM_UP_S = 2  # left out of the frame rate: the first snapshot, plotly's first layout
MIN_FPS = 5.0
PAUSE_S = 0.5
CELLS = [
    "import asyncio\n"
    "from labkit.lab.live import LiveChart\n"
    "from labkit.lab.widgets import EventSender\n\n"
    "chart = LiveChart()\n"
    "await chart.ready()\n"
    "chart",
    "form = EventSender()\n"
    "form.type_box.value = 'load'\n"
    f"load = asyncio.ensure_future(form.send_burst({RATE * SECONDS}, rate={RATE}))\n"
    "print('load started')",
]
DRAWN = """() => {
    const el = document.querySelector('.labkit-live [data-frames]');
    return el ? {frames: Number(el.dataset.frames), ms: Number(el.dataset.drawMs)} : {frames: 0, ms: 0};
}"""
# What the page shows: the x range of the value panel and of the bars, and the counters' text.
SHOWN = """() => {
    const gd = document.querySelector('.labkit-live .js-plotly-plot');
    return {values: gd.layout.xaxis.range, bars: gd.layout.xaxis2.range,
            counters: document.querySelector('.labkit-live-counters').innerText};
}"""
MB = 1024 * 1024


def drawn(page: Page) -> dict[str, float]:
    return page.evaluate(DRAWN)


def lab_processes() -> dict[str, list[psutil.Process]]:
    """The JupyterLab server this test started, its kernel, and Chromium (every process of the browser)."""
    me = psutil.Process()
    children = me.children(recursive=True)
    server = next(p for p in children
                  if "jupyter" in " ".join(p.cmdline()) and "lab" in " ".join(p.cmdline()))
    kernel = next(p for p in server.children(recursive=True) if "ipykernel" in " ".join(p.cmdline()))
    browser = [p for p in children if "chromium" in p.name()]
    return {"server": [server], "kernel": [kernel], "chromium": browser}


def test_the_chart_keeps_up_at_1000_events_a_second(lab_server: tuple[str, str], chromium: Browser):
    put_notebook(lab_server, NOTEBOOK, CELLS)
    page = open_notebook(chromium, lab_server, NOTEBOOK)
    run_all(page, "load started", "dashboard-load-start")
    started = time.monotonic()
    processes = lab_processes()
    rss = {name: [procs[0].memory_info().rss] for name, procs in processes.items() if name != "chromium"}

    # Frames drawn per second over the run, its first WARM_UP_S left out, sampled every 2 s.
    page.wait_for_timeout(WARM_UP_S * 1000)  # the warm-up left out of the measurement, not a wait for a condition
    began, first = time.monotonic(), drawn(page)
    cpu = {name: cpu_seconds(procs) for name, procs in processes.items()}
    rates = []
    while time.monotonic() - started < SECONDS - 2:
        mark, count = time.monotonic(), drawn(page)["frames"]
        page.wait_for_timeout(2000)  # a sampling period of the page's frame counter, not a wait for a condition
        rates.append((drawn(page)["frames"] - count) / (time.monotonic() - mark))
        for name, values in rss.items():
            values.append(processes[name][0].memory_info().rss)
    last, elapsed = drawn(page), time.monotonic() - began
    fps = (last["frames"] - first["frames"]) / elapsed
    ms_per_frame = (last["ms"] - first["ms"]) / max(1, last["frames"] - first["frames"])
    cores = {name: (cpu_seconds(procs) - cpu[name]) / elapsed for name, procs in processes.items()}
    shown = page.evaluate(SHOWN)

    # Pause: the frames stop changing within PAUSE_S of the click.
    page.locator(".labkit-pause").first.click()
    clicked, last_change, seen = time.monotonic(), time.monotonic(), drawn(page)["frames"]
    while time.monotonic() - last_change < 1.5:
        now = drawn(page)["frames"]
        if now != seen:
            seen, last_change = now, time.monotonic()
        time.sleep(POLL_S)
    pause_s = max(0.0, last_change - clicked)
    page.locator(".labkit-live").first.screenshot(path=str(ARTIFACTS / "dashboard-load.png"))

    growth = {name: (max(values) - values[0]) / MB for name, values in rss.items()}
    print(f"frames/s {fps:.1f} over {elapsed:.0f} s (first {WARM_UP_S} s left out), "
          f"per 2 s window min {min(rates):.1f} "
          f"max {max(rates):.1f}; {ms_per_frame:.0f} ms of the page's time per frame; pause took effect after "
          f"{pause_s * 1000:.0f} ms; CPU cores: " + ", ".join(f"{name} {used:.2f}" for name, used in cores.items())
          + "; RSS start/max MB: " + ", ".join(f"{name} {v[0] / MB:.0f}/{max(v) / MB:.0f}" for name, v in rss.items()))
    assert fps >= MIN_FPS, f"the page drew {fps:.1f} frames a second at {RATE} events a second, not {MIN_FPS}"
    assert pause_s <= PAUSE_S, f"the chart still drew {pause_s:.2f} s after Pause"
    assert growth["server"] < 200 and growth["kernel"] < 300, growth  # nothing the page has not drawn queues up
    # Both time panels show the same window; the counters give the whole run's percentiles beside the window's.
    assert shown["bars"][0] + 0.5 == shown["values"][0] and shown["bars"][1] == shown["values"][1], shown
    assert "last 60 s: p50" in shown["counters"] and "whole run: p50" in shown["counters"], shown["counters"]
