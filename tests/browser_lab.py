"""Shared browser-test parts: JupyterLab on the notebooks, driven by Debian's Chromium through Playwright.

:func:`lab_server` starts JupyterLab on a free loopback port in a temporary
folder holding copies of every notebook, against the test stack (its kernels
inherit the ``LABKIT_*`` variables); ``shared_lab_server`` and ``shared_chromium`` are one
server and one browser for a whole test module. :func:`open_notebook` opens one in a page
and waits for its kernel; :func:`run_all` runs every cell; :func:`put_notebook` adds a
small notebook of a test's own to the server. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import psutil
import pytest
from playwright.sync_api import Browser, Locator, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from labkit import Stack
from labkit.settings import REPO_ROOT, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
RUN_ALL_TIMEOUT_MS = 180_000
CELL_STARTED = ("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                ".some(p => /\\[(\\*|\\d+)\\]/.test(p.innerText))")
NOTEBOOK_CURRENT = """(name) => {
    const panel = window.jupyterapp.shell.currentWidget;
    return !!(panel && panel.context && panel.context.path.endsWith(name) && panel.sessionContext.session?.kernel);
}"""
ERROR_OUTPUTS = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
# Every cell stays in the page (JupyterLab otherwise detaches cells scrolled out of view),
# and no news or update toast covers the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


@pytest.fixture
def lab_server(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A JupyterLab server on copies of every notebook (in a temporary folder); yields (URL, token)."""
    with serve_lab(stack, tmp_path) as lab:
        yield lab


@pytest.fixture(scope="module")
def shared_lab_server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """:func:`lab_server`, one for the test module: its tests open different notebooks in it."""
    with serve_lab(stack, tmp_path_factory.mktemp("lab")) as lab:
        yield lab


@contextmanager
def serve_lab(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """JupyterLab on copies of every notebook in ``tmp_path``, against ``stack``; yields (URL, token), then stops it."""
    root = tmp_path / "lab"
    root.mkdir()
    for notebook in (REPO_ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, root)
    for name, values in LAB_SETTINGS.items():
        target = tmp_path / "settings" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        **stack.settings.as_env(),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
    ]
    log = (tmp_path / "jupyterlab.log").open("wb")
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited ({server.returncode}):\n{(tmp_path / 'jupyterlab.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {url} within 60 s")
            time.sleep(0.2)
        yield url, token
    finally:
        kernels = psutil.Process(server.pid).children(recursive=True) if server.poll() is None else []
        server.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        for leftover in psutil.wait_procs(kernels, timeout=5)[1]:
            leftover.kill()
        log.close()


def put_notebook(lab: tuple[str, str], name: str, cells: list[str]) -> None:
    """Save a notebook ``name`` of code ``cells`` in the server's root, through its contents API."""
    url, token = lab
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    body = json.dumps({"type": "notebook", "format": "json", "content": notebook}).encode()
    request = urllib.request.Request(
        f"{url}/api/contents/{name}", data=body, method="PUT",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 201), f"saving {name}: HTTP {response.status}"


TABLE_ROWS = """(table) => {
    const heads = [...table.querySelectorAll('thead th')].map(th => th.innerText.trim());
    return [...table.querySelectorAll('tbody tr')].map(tr =>
        Object.fromEntries([...tr.querySelectorAll('td')].map((td, i) => [heads[i], td.innerText.trim()])));
}"""


def table_rows(where: Page | Locator, selector: str) -> list[dict[str, str]]:
    """The rows of the first HTML table inside ``selector`` (Playwright's selectors: CSS, ``:has-text()``), as shown."""
    table = where.locator(f"{selector} table").first
    return table.evaluate(TABLE_ROWS) if table.count() else []


def counter_number(page: Page, selector: str, label: str) -> int:
    """The number after ``label`` in a counters widget, read from the page."""
    text = page.locator(selector).first.inner_text()
    found = re.search(rf"{label}\s+(\d+)", text)
    assert found, f"no '{label} N' in {text!r}"
    return int(found.group(1))


def plot_points(page: Page) -> int:
    """Markers the live chart has drawn: one SVG point per point, up to ``labkit.lab.live.MARKERS`` a line."""
    return page.locator(".js-plotly-plot .scatterlayer path.point").count()


def accept_kernel_dialog(page: Page) -> None:
    """A fresh JupyterLab may ask which kernel to use; take the one it proposes."""
    dialog = page.locator(".jp-Dialog")
    try:
        dialog.wait_for(state="visible", timeout=5_000)
    except Exception:
        return
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless."""
    with launch_chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def shared_chromium() -> Iterator[Browser]:
    """:func:`chromium`, one for the test module."""
    with launch_chromium() as browser:
        yield browser


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, closed on leaving."""
    assert CHROMIUM.exists(), "Debian's Chromium is needed: apt-get install -y chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_notebook(browser: Browser, lab: tuple[str, str], name: str) -> Page:
    """A page on notebook ``name`` with its kernel idle and the side panel closed.

    Each notebook opens in a JupyterLab workspace of its own, so a server shared by several
    tests does not reopen the notebooks of the tests before (as hidden tabs) beside it.
    """
    url, token = lab
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}")
    page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
    accept_kernel_dialog(page)
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=30_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    page.wait_for_function(NOTEBOOK_CURRENT, arg=name, timeout=30_000)
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    return page


def run_all(page: Page, done_text: str | re.Pattern[str], screenshot: str,
            timeout_ms: int = RUN_ALL_TIMEOUT_MS) -> None:
    """Run every cell and wait for an output holding ``done_text`` (the notebook's last check prints it).

    On a timeout, a full-page screenshot goes to ``test-artifacts/<screenshot>-failed.png``
    and the test fails with the error outputs on the page.
    """
    # A cold JupyterLab may take the command before the notebook is its current widget and run
    # nothing: run again until a cell shows it started ([*] or a number in its prompt). The command's
    # promise is not awaited: it settles only when the page has every cell's reply, and once (notebook 10,
    # a fresh-clone CI run) the page kept one cell's reply pending after the whole notebook had run.
    for _ in range(3):
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        try:
            page.wait_for_function(CELL_STARTED, timeout=20_000)
            break
        except PlaywrightTimeout:
            continue
    try:
        page.locator(".jp-OutputArea-output").filter(has_text=done_text).first.wait_for(timeout=timeout_ms)
    except Exception as exc:
        page.screenshot(path=str(ARTIFACTS / f"{screenshot}-failed.png"), full_page=True)
        errors = page.locator(ERROR_OUTPUTS).all_inner_texts()
        pytest.fail(f"the notebook did not finish in the browser ({exc}); error outputs: {errors}")
