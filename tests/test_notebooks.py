"""Every notebook runs top to bottom in a fresh kernel against the test stack; none is committed with outputs.

Each notebook ends with cells that assert what it showed, so executing it is a
test. The kernel finds the test stack through ``LABKIT_*`` variables (it inherits
this process's environment), exactly as a user's kernel finds theirs.
"""

from __future__ import annotations

import time

import nbformat
import pytest
from nbclient import NotebookClient

from labkit import Stack
from labkit.settings import REPO_ROOT
from labkit.ops.stack import _settings_env

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = [
    "01_start_the_stack.ipynb",
    "02_send_events.ipynb",
    "03_live_dashboard.ipynb",
    "04_the_gateway.ipynb",
    "05_measure.ipynb",
]
CELL_TIMEOUT_S = 120


def test_the_notebooks_are_all_here():
    assert sorted(path.name for path in NOTEBOOKS_DIR.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_saved_without_outputs(name: str):
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count"
    assert "widgets" not in nb.metadata, f"{name} holds saved widget state (plotly's bundle is 5 MB)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name: str, stack: Stack, monkeypatch: pytest.MonkeyPatch):
    for variable, value in _settings_env(stack.settings).items():
        monkeypatch.setenv(variable, value)
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        store_widget_state=False,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    began = time.monotonic()
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    finally:
        # Notebook 04 starts a private stack under the test stack's state folder and stops it;
        # if the notebook failed half-way, stop it here so no process outlives the test.
        Stack(stack.settings.replace(state_dir=stack.state_dir / "tiny-limits")).down()
    print(f"{name}: {time.monotonic() - began:.1f} s")
