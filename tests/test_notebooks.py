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
    "06_when_things_fail.ipynb",
    "07_partitions_keys_groups.ipynb",
    "08_inside_the_topic.ipynb",
]
# Notebooks that start private stacks under the test stack's state folder (and stop them).
PRIVATE_STACKS = ["tiny-limits", "faults"]
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


# The lessons on failure, groups and the topic run on both brokers (`make test` runs them again on noida-db).
ON_BOTH_BROKERS = ("06", "07", "08")


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.both_brokers] if name.startswith(ON_BOTH_BROKERS) else []) for name in NOTEBOOKS
])
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
        # Notebooks 04 and 06 start private stacks under the test stack's state folder and stop them;
        # if a notebook failed half-way, stop them here so no process outlives the test.
        for folder in PRIVATE_STACKS:
            Stack(stack.settings.replace(state_dir=stack.state_dir / folder)).down()
    print(f"{name}: {time.monotonic() - began:.1f} s")
    # The session stack serves the tests after this one: no notebook may leave it broken.
    assert stack.is_running(), f"{name} left the test stack with a component stopped: {stack.status()}"
    assert stack.health("consumer")["status"] == "ok" and stack.health("producer")["status"] == "ok"
