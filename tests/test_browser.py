"""A real browser runs notebook 03 in JupyterLab: the widgets render, and a click moves the chart.

Debian's Chromium, driven by Playwright (see ``browser.py``), opens the notebook,
runs every cell, clicks the rendered **Send** button, and checks in the page (not
in the kernel) that the counters and the plot's points change. A screenshot goes
to ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import re

from playwright.sync_api import Browser

from browser_lab import ARTIFACTS, counter_number, open_notebook, plot_points, run_all

NOTEBOOK = "03_live_dashboard.ipynb"


def test_dashboard_renders_and_a_click_updates_it(lab_server: tuple[str, str], chromium: Browser):
    page = open_notebook(chromium, lab_server, NOTEBOOK)
    # The last cell prints this once every check in the notebook passed.
    run_all(page, re.compile(r"\d+ events drawn, latency"), "dashboard")
    # The widgets rendered: a kernel-side object alone would show only as text.
    counters, send = page.locator(".labkit-live-counters"), page.locator("button.labkit-send")
    counters.wait_for(state="visible", timeout=30_000)
    send.wait_for(state="visible", timeout=30_000)
    page.wait_for_function(
        "() => document.querySelectorAll('.js-plotly-plot .scatterlayer path.point').length >= 310",
        timeout=30_000,
    )
    received, points = counter_number(page, ".labkit-live-counters", "received"), plot_points(page)
    acked = counter_number(page, ".labkit-sender-counters", "acked")

    send.scroll_into_view_if_needed()
    send.click()
    page.wait_for_function(
        """([received, points]) => {
            const text = document.querySelector('.labkit-live-counters').innerText;
            const now = Number((text.match(/received\\s+(\\d+)/) || [0, -1])[1]);
            return now > received
                && document.querySelectorAll('.js-plotly-plot .scatterlayer path.point').length > points;
        }""",
        arg=[received, points],
        timeout=30_000,
    )
    page.wait_for_function(
        """(acked) => {
            const text = document.querySelector('.labkit-sender-counters').innerText;
            return Number(/acked\\s+(\\d+)/.exec(text)[1]) > acked;
        }""",
        arg=acked,
        timeout=30_000,
    )
    assert counter_number(page, ".labkit-live-counters", "received") == received + 1
    assert plot_points(page) == points + 1

    dashboard = page.locator(".jp-OutputArea-output").filter(has=counters)
    dashboard.screenshot(path=str(ARTIFACTS / "dashboard.png"))
