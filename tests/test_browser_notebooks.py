"""Notebooks 01, 02, 04, 05, 07 and 09 in a real browser: Run All, no red box, and each widget in the lesson's state.

One JupyterLab server and one Chromium (``browser_lab``) serve every notebook of this
module, against the shared test stack. Each test runs one notebook with Run All and
reads the rendered page, not the kernel: no stderr output box, the notebook's last
check printed its sentence, and the widgets show what the lesson leaves them showing
(not what a solution would: solutions are folded markdown, which Run All never runs).
A screenshot of each notebook's main widget goes to ``test-artifacts/notebook-NN.png``.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Callable

import pytest
from browser_lab import ARTIFACTS, ERROR_OUTPUTS, open_notebook, run_all, table_rows
from playwright.sync_api import Browser, Locator, Page

from labkit import Stack

OUTPUT = ".jp-OutputArea-output"


def output_with(page: Page, selector_or_text: str) -> Locator:
    """The last output area holding an element matching a CSS selector, or else the text given."""
    if selector_or_text.startswith("."):
        return page.locator(OUTPUT).filter(has=page.locator(selector_or_text)).last
    return page.locator(OUTPUT).filter(has_text=selector_or_text).last


def image_source(src: str) -> str:
    """The text of an image's ``data:`` URL (base64 or percent-encoded)."""
    head, _, body = src.partition(",")
    return base64.b64decode(body).decode() if head.endswith(";base64") else urllib.parse.unquote(body)


def started_the_stack(page: Page, stack: Stack) -> Locator:
    # The progress bar's label says how `up()` ended (the stack ran already here) and the bar is green.
    label = page.locator(".widget-label").filter(has_text=re.compile(r"^(started|it was already running: adopted it)$"))
    assert label.count() == 1, page.locator(".widget-label").all_inner_texts()
    bar = page.locator(".widget-hprogress").filter(has=page.locator(".progress-bar-success"))
    assert bar.count() == 1 and "stack" in bar.inner_text(), page.locator(".widget-hprogress").all_inner_texts()
    # The architecture picture (an SVG output, which JupyterLab shows as an image) is drawn, with the real addresses.
    drawing = page.locator(f"{OUTPUT}[data-mime-type='image/svg+xml']").first
    picture = drawing.locator("img")
    assert picture.evaluate("img => img.complete && img.naturalWidth") == 1080
    svg = image_source(picture.get_attribute("src") or "")
    assert "labkit-architecture" in svg and f"{stack.settings.host}:{stack.settings.gateway_port}" in svg, svg[:300]
    status = {row["component"]: row["state"] for row in table_rows(page, f"{OUTPUT}:has-text('pid')")}
    assert set(status.values()) == {"running"} and len(status) >= 4, status
    return drawing


def sent_events(page: Page, stack: Stack) -> Locator:
    # The form as the lesson leaves it: a burst stopped half-way, said in words; no field in red; every send acked.
    note = page.locator(".labkit-burst-note").inner_text()
    assert re.fullmatch(r"stopped: you pressed Stop, after [\d,]+ of 500", note), note
    cut = page.locator(".labkit-burst-note").evaluate("e => e.scrollWidth > e.clientWidth")
    assert not cut, "the burst's note is cut short in the page"
    assert [text for text in page.locator("[class*='labkit-problem-']").all_inner_texts() if text.strip()] == []
    counters = page.locator(".labkit-sender-counters").inner_text()
    sent, acked, errors = (int(n) for n in re.findall(r"\d+", counters)[:3])
    assert sent == acked >= 21 and errors == 0, counters
    assert page.locator(".labkit-ack-log tr").count() > 1
    return output_with(page, ".labkit-sender-counters")


def the_gateway(page: Page, stack: Stack) -> Locator:
    # The tables say what the gateway answered: 401 without a key, 403 from a foreign origin, then 429 past the limit.
    refusals = {row["request"]: row["status"] for row in table_rows(page, f"{OUTPUT}:has-text('wrong key')")}
    assert refusals == {"no key": "401", "wrong key": "401"}, refusals
    assert output_with(page, "elsewhere.example").locator("td").filter(has_text=re.compile("^403$")).count() == 1
    connections = table_rows(page, f"{OUTPUT}:has-text('refused 429')")
    assert connections[-1]["answer"] == "refused 429", connections
    assert all(r["answer"] == "accepted" for r in connections[:-1]), connections
    return output_with(page, "refused 429")


def measured(page: Page, stack: Stack) -> Locator:
    # The figure the kernel holds is drawn: both panels' traces, and the reading in words below it.
    page.wait_for_function("() => { const gd = document.querySelector('.js-plotly-plot'); return gd && gd.data; }",
                           timeout=30_000)
    names = page.evaluate("() => document.querySelector('.js-plotly-plot').data.map(t => t.name)")
    assert names == ["p50", "p99", "received/s", "asked"], names
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() == 4
    reading = output_with(page, "On this machine, at").inner_text()
    assert "50 events/s" in reading and "1,000 events/s" in reading, reading
    return page.locator(OUTPUT).filter(has=page.locator(".js-plotly-plot")).last


def partitions_and_groups(page: Page, stack: Stack) -> Locator:
    # The live picture as the lesson leaves it: member-2 owns every partition, after the third step of the bar.
    picture = page.locator(".labkit-group-picture")
    page.wait_for_function(
        "() => !document.querySelector('.labkit-group-picture').innerText.includes('nobody')", timeout=10_000)
    owners = [row["owner"] for row in table_rows(page, ".labkit-group-picture") if row["partition"].isdigit()]
    assert owners == ["member-2"] * stack.settings.partitions, owners
    assert "member-2 read this step" in picture.inner_text() and "member-1 read" not in picture.inner_text()
    joining = page.locator(".widget-hprogress").filter(has_text="group")
    assert joining.locator(".progress-bar-success").count() == 1
    return output_with(page, ".labkit-group-picture")


def delivery_guarantees(page: Page, stack: Stack) -> Locator:
    # Two records with one id; the slow watcher closed with 1013; the hot key's partition; one broker said in words.
    assert len(table_rows(page, f"{OUTPUT}:has-text('offset'):has-text('sent')")) == 2
    [slow] = table_rows(page, f"{OUTPUT}:has-text('close_code')")
    assert slow["close_code"] == "1013" and int(slow["overflows"]) >= 1, slow
    assert "one broker" in output_with(page, "This lab runs").inner_text()
    return output_with(page, "close_code")


# notebook: (what its last cell prints once its checks passed, what the page must show)
NOTEBOOKS: dict[str, tuple[str, Callable[[Page, Stack], Locator]]] = {
    "01_start_the_stack.ipynb": ("stack is up:", started_the_stack),
    "02_send_events.ipynb": ("checkouts arrived, in order per key", sent_events),
    "04_the_gateway.ipynb": ("key-auth and both rate limits behaved as described", the_gateway),
    "05_measure.ipynb": ("every event sent was received, three runs at each of", measured),
    "07_partitions_keys_groups.ipynb": ("fan-out: every watcher got all", partitions_and_groups),
    "09_delivery_guarantees.ipynb": ("a resend is a second record", delivery_guarantees),
}


@pytest.mark.parametrize("notebook", list(NOTEBOOKS))
def test_notebook_runs_in_the_browser_and_shows_the_lessons_state(
    notebook: str, shared_lab_server: tuple[str, str], shared_chromium: Browser, stack: Stack
):
    done, check = NOTEBOOKS[notebook]
    page = open_notebook(shared_chromium, shared_lab_server, notebook)
    try:
        run_all(page, done, notebook.removesuffix(".ipynb"))
        errors = page.locator(ERROR_OUTPUTS)
        assert errors.count() == 0, errors.all_inner_texts()
        shown = check(page, stack)
        shown.scroll_into_view_if_needed()
        shown.screenshot(path=str(ARTIFACTS / f"notebook-{notebook[:2]}.png"))
    finally:
        # The kernel ends with the page: the next notebook's runs alone beside the shared stack.
        page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')")
        page.close()
    assert stack.is_running()
