"""A real browser runs notebook 02 in JupyterLab and uses its form as a person would.

Debian's Chromium, driven by Playwright (``browser_lab``), runs every cell, clicks the
rendered **Send** button and sees the ack arrive in the form's log; then types
``abc`` as the value, sees the red message under that field, and checks that nothing
was sent. Screenshots go to ``test-artifacts/form-sent.png`` and ``form-refused.png``.
"""

from __future__ import annotations

import re

from browser_lab import ARTIFACTS, counter_number, open_notebook, run_all
from playwright.sync_api import Browser, Page

NOTEBOOK = "02_send_events.ipynb"
COUNTERS = ".labkit-sender-counters"


def field(page: Page, label: str):
    """The text input of the form's field named ``label``."""
    return page.locator(".widget-text").filter(has=page.locator("label",
                                                                has_text=re.compile(f"^{label}$"))).locator("input")


def latest_ack(page: Page) -> str:
    """The newest row of the form's ack log (ack id, partition, offset, round trip), as shown."""
    return page.locator(".labkit-ack-log tr").nth(1).inner_text()


def wait_for_acked(page: Page, count: int) -> None:
    page.wait_for_function(
        """([selector, count]) =>
            Number(/acked\\s+(\\d+)/.exec(document.querySelector(selector).innerText)[1]) >= count""",
        arg=[COUNTERS, count],
        timeout=30_000,
    )


def test_the_form_sends_and_says_what_is_wrong_under_the_field(lab_server: tuple[str, str], chromium: Browser):
    page = open_notebook(chromium, lab_server, NOTEBOOK)
    run_all(page, re.compile(r"checkouts arrived, in order per key"), "form")
    send, counters = page.locator("button.labkit-send"), page.locator(COUNTERS)
    send.wait_for(state="visible", timeout=30_000)
    form = page.locator(".jp-OutputArea-output").filter(has=counters)

    # A send through the rendered form: the ack shows in its log and the counters move.
    sent, acked = counter_number(page, COUNTERS, "sent"), counter_number(page, COUNTERS, "acked")
    before = latest_ack(page)
    send.scroll_into_view_if_needed()
    send.click()
    wait_for_acked(page, acked + 1)
    page.wait_for_function(
        "(before) => document.querySelectorAll('.labkit-ack-log tr')[1].innerText !== before",
        arg=before, timeout=30_000
    )
    ack_id, partition, offset = latest_ack(page).split()[:3]
    assert re.fullmatch(r"[0-9a-f]{12}", ack_id) and partition.isdigit() and offset.isdigit(), latest_ack(page)
    assert counter_number(page, COUNTERS, "sent") == sent + 1
    form.screenshot(path=str(ARTIFACTS / "form-sent.png"))

    # A value that is not a number: said in red under the field, the text kept, nothing sent.
    value = field(page, "value")
    value.fill("abc")
    message = page.locator(".labkit-problem-value")
    message.filter(has_text="'abc' is not a number").wait_for(timeout=30_000)
    assert message.locator("span").evaluate("node => getComputedStyle(node).color") == "rgb(198, 40, 40)"
    send.click()
    form.screenshot(path=str(ARTIFACTS / "form-refused.png"))
    assert value.input_value() == "abc"

    # Kernels handle widget messages in order: once a good send after it is acked, the refused click was handled.
    value.fill("2")
    message.filter(has_text="not a number").wait_for(state="detached", timeout=30_000)
    send.click()
    wait_for_acked(page, acked + 2)
    assert counter_number(page, COUNTERS, "sent") == sent + 2, "the refused click sent an event"
    assert counter_number(page, COUNTERS, "errors") == 0
