"""A real browser runs notebook 03 in JupyterLab, ten times over: the chart is never blank, and a click moves it.

Debian's Chromium, driven by Playwright (see ``browser_lab.py``), opens the notebook and,
ten times, restarts the kernel and runs every cell (JupyterLab's "Restart Kernel and Run
All Cells", its dialog accepted, as a person does). Each time it checks in the page (not
in the kernel) that the live chart drew its traces and points, and that a click on the
rendered **Send** button adds one point and one to the counters. Then it reloads the page
(the chart's new views draw everything again from a snapshot), and runs the chart's cell
again: the consumer still has one watcher for it, so the old chart closed.
A screenshot goes to ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import os
import re
import time

from browser_lab import ARTIFACTS, counter_number, open_notebook, plot_points
from playwright.sync_api import Browser, Page
from waiting import POLL_S

from labkit import Stack

NOTEBOOK = "03_live_dashboard.ipynb"
RUNS = int(os.environ.get('LABKIT_BROWSER_RUNS', '10'))
DONE = re.compile(r"\d+ events drawn, latency")  # the last cell prints this once its checks passed
CHART = ".labkit-live .js-plotly-plot"
# What the page shows of the chart: traces plotly holds, value traces drawn, points, axis titles.
CHART_STATE = """() => {
    const gd = document.querySelector('.labkit-live .js-plotly-plot');
    if (!gd) return null;
    return {
        traces: (gd.data || []).length,
        lines: gd.querySelectorAll('.scatterlayer .trace').length,
        points: gd.querySelectorAll('.scatterlayer path.point').length,
        axisTitles: gd.querySelectorAll('.g-xtitle text, .g-x2title text, .g-x3title text, '
                                        + '.g-ytitle text, .g-y2title text, .g-y3title text').length,
    };
}"""


def restart_and_run_all(page: Page) -> None:
    """Kernel > Restart Kernel and Run All Cells, its dialog accepted; return once the last cell printed."""
    page.evaluate("() => document.querySelectorAll('.jp-OutputArea-output').forEach(e => e.dataset.old = '1')")
    # returns before the dialog
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-run-all'); }")
    page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").click(timeout=30_000)
    page.locator(".jp-OutputArea-output:not([data-old])").filter(has_text=DONE).first.wait_for(timeout=120_000)


def check_chart_drawn(page: Page, run: int | str) -> dict:
    """The chart holds traces with points and titled axes: not a blank canvas."""
    try:
        # The value panel draws at most 83 points a second per type (labkit/lab/chart.py thins what it
        # sends so both panels cover one window): 03's 310 events show as fewer points, and never as none.
        page.wait_for_function(f"() => {{ const s = ({CHART_STATE})(); return s && s.lines >= 2 && s.points >= 100; }}",
                               timeout=30_000)
    except Exception as exc:
        page.screenshot(path=str(ARTIFACTS / f"dashboard-blank-{run}.png"), full_page=True)
        raise AssertionError(f"run {run}: the chart is blank or short of points: {page.evaluate(CHART_STATE)}") from exc
    state = page.evaluate(CHART_STATE)
    assert state["traces"] >= 4 and state["axisTitles"] == 6, (run, state)
    return state


def click_send_adds_a_point(page: Page) -> None:
    send = page.locator("button.labkit-send")
    received, points = counter_number(page, ".labkit-live-counters", "received"), plot_points(page)
    send.scroll_into_view_if_needed()
    send.click()
    page.wait_for_function(
        """([received, points]) => {
            const text = document.querySelector('.labkit-live-counters').innerText;
            const now = Number((text.match(/received\\s+(\\d+)/) || [0, -1])[1]);
            return now > received
                && document.querySelectorAll('.labkit-live .js-plotly-plot .scatterlayer path.point').length > points;
        }""",
        arg=[received, points],
        timeout=30_000,
    )
    assert counter_number(page, ".labkit-live-counters", "received") == received + 1
    assert plot_points(page) == points + 1


def test_dashboard_never_blank_over_ten_restarts(lab_server: tuple[str, str], chromium: Browser, stack: Stack):
    page = open_notebook(chromium, lab_server, NOTEBOOK)
    for run in range(RUNS):
        restart_and_run_all(page)
        assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
        check_chart_drawn(page, run)
        click_send_adds_a_point(page)

    # A page reload makes new views of the same chart: each asks for plotly.js and a snapshot, and draws it all.
    # (saved first: outputs live in the file; the kernel still holds the chart's state)
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
    page.reload()
    page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
    check_chart_drawn(page, "reload")

    # Running the chart's cell again closes the chart it made before: one watcher, not two.
    watchers = stack.health("consumer")["watchers"]
    chart_cell = page.locator(".jp-CodeCell").filter(has_text="LiveChart()").first
    for _ in range(2):
        chart_cell.click()
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")
        page.locator(CHART).first.wait_for(timeout=30_000)
        deadline = time.monotonic() + 10  # the old chart's connection closes in the background
        while (now := stack.health("consumer")["watchers"]) != watchers:
            assert time.monotonic() < deadline, f"re-running the chart cell: watchers went from {watchers} to {now}"
            time.sleep(POLL_S)

    restart_and_run_all(page)
    check_chart_drawn(page, RUNS)
    dashboard = page.locator(".jp-OutputArea-output").filter(has=page.locator(".labkit-live-counters"))
    dashboard.screenshot(path=str(ARTIFACTS / "dashboard.png"))
