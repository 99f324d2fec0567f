"""Notebooks 06, 08 and 10 in a real browser: the fault tables and the topic's live tail show in the page.

Debian's Chromium, driven by Playwright (``browser_lab.py``), runs every cell in
JupyterLab; the checks read the rendered widgets (not the kernel). Screenshots go
to ``test-artifacts/faults.png``, ``test-artifacts/topic-tail.png`` and ``test-artifacts/scaling-out.png``.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from browser_lab import ARTIFACTS, ERROR_OUTPUTS, open_notebook, run_all, table_rows
from playwright.sync_api import Browser

from labkit import Sender, Stack

# The last view of 06's chart, as the page draws it: trace names, shaded fault spans, the counters' words.
FAULT_CHART = """(() => {
    const charts = [...document.querySelectorAll('.labkit-live')];
    const live = charts[charts.length - 1];
    const gd = live && live.querySelector('.js-plotly-plot');
    if (!gd || !gd.data) return {ok: false};
    const names = gd.data.map(t => t.name);
    const shaded = ((gd.layout || {}).shapes || []).length;
    const counters = live.querySelector('.labkit-live-counters').innerText;
    return {ok: shaded >= 8 && counters.includes('stopped'), names, shaded, counters};
})()"""


def test_faults_notebook_shows_every_acked_event_back(lab_server: tuple[str, str], chromium: Browser, stack: Stack):
    page = open_notebook(chromium, lab_server, "06_when_things_fail.ipynb")
    try:
        run_all(page, "every acked event came back after each fault", "faults")
        rows = {row["fault"]: row for row in table_rows(page, ".labkit-fault-table")}
        assert set(rows) == {"consumer", "gateway", "broker", "lost log"}, rows
        for fault in ("consumer", "gateway", "broker"):
            row = rows[fault]
            assert row["missing"] == "0" and row["received"] == row["acked"] != "0", row
        assert rows["consumer"]["recovered"] == "true" and rows["gateway"]["recovered"] == "true"
        assert rows["lost log"]["recovered"] == "false" and int(rows["lost log"]["missing"]) >= 20, rows["lost log"]
        table = page.locator(".jp-OutputArea-output").filter(has=page.locator(".labkit-fault-table"))
        table.scroll_into_view_if_needed()
        table.screenshot(path=str(ARTIFACTS / "faults.png"))
        # After Run All: no red box, and the chart still shows, frozen, each fault a line and a shaded span.
        assert page.locator(ERROR_OUTPUTS).count() == 0, page.locator(ERROR_OUTPUTS).first.inner_text()
        chart = page.locator(".jp-OutputArea-output").filter(has=page.locator(".labkit-live-counters")).last
        chart.scroll_into_view_if_needed()
        page.wait_for_function(FAULT_CHART + ".ok", timeout=30_000)
        drawn = page.evaluate(FAULT_CHART)
        assert {"consumer-fault", "gateway-fault", "broker-fault", "lost-log-fault"} <= set(drawn["names"]), drawn
        assert drawn["shaded"] >= 8, drawn
        assert "stopped" in drawn["counters"] and "resumed with a gap" in drawn["counters"], drawn
        chart.screenshot(path=str(ARTIFACTS / "faults-chart.png"))
    finally:
        # The notebook broke and stopped a private stack of its own; the test stack must be whole.
        Stack(stack.settings.replace(state_dir=stack.state_dir / "faults")).down()
    assert stack.is_running() and stack.health("consumer")["status"] == "ok"


def test_topic_notebook_tail_shows_records_live(lab_server: tuple[str, str], chromium: Browser, stack: Stack):
    page = open_notebook(chromium, lab_server, "08_inside_the_topic.ipynb")
    run_all(page, "the tail showed every acked record", "topic-tail")
    tail = page.locator(".labkit-topic-tail")
    tail.last.wait_for(state="visible", timeout=30_000)
    assert table_rows(page, ".labkit-topic-tail"), "the tail widget shows no record"
    marks = table_rows(page, ".labkit-topic-marks")
    assert [row["partition"] for row in marks] == [str(p) for p in range(stack.settings.partitions)], marks

    # A record sent now, from outside the notebook, shows up in the page's tail: it is live.
    kind = f"from-the-test-{uuid.uuid4().hex[:6]}"

    async def send() -> None:
        async with Sender(settings=stack.settings) as sender:
            await sender.send({"type": kind, "value": 1, "key": "browser"})

    # Playwright's sync API runs an event loop in this thread: the sender gets a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, send()).result(timeout=30)
    page.wait_for_function(
        "(kind) => [...document.querySelectorAll('.labkit-topic-tail td')].some(td => td.innerText.includes(kind))",
        arg=kind,
        timeout=30_000,
    )
    row = next(r for r in table_rows(page, ".labkit-topic-tail") if kind in r["value"])
    assert row["key"] == "browser" and row["offset"].isdigit() and row["timestamp"], row
    viewer = page.locator(".jp-OutputArea-output").filter(has=page.locator(".labkit-topic-marks"))
    viewer.scroll_into_view_if_needed()
    viewer.screenshot(path=str(ARTIFACTS / "topic-tail.png"))


# Three JVMs and a kill -9 on a busy 2-core machine: the notebook's own wait (10 min) bounds it, not the suite's 5.
@pytest.mark.timeout(720)
def test_scaling_out_notebook_shows_the_leader_move_and_nothing_missing(lab_server: tuple[str, str], chromium: Browser,
                                                                         stack: Stack):
    page = open_notebook(chromium, lab_server, "10_scaling_out.ipynb")
    try:
        # Three JVMs start first: minutes on a busy 2-core machine.
        run_all(page, "the leader of partition 0 was killed and nothing acked went missing", "scaling-out",
                timeout_ms=600_000)
        rows = {row["fault"]: row for row in table_rows(page, ".labkit-fault-table")}
        leader = rows["leader"]
        assert leader["missing"] == "0" and leader["received"] == leader["acked"] != "0", leader
        assert "took over" in leader["what happened"], leader
        assert page.locator(ERROR_OUTPUTS).count() == 0, page.locator(ERROR_OUTPUTS).first.inner_text()
        table = page.locator(".jp-OutputArea-output").filter(has=page.locator(".labkit-fault-table"))
        table.scroll_into_view_if_needed()
        table.screenshot(path=str(ARTIFACTS / "scaling-out.png"))
    finally:
        Stack(stack.settings.replace(state_dir=stack.state_dir / "cluster")).down()
    assert stack.is_running() and stack.health("consumer")["status"] == "ok"
