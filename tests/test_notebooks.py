"""Every notebook runs top to bottom in a fresh kernel against the test stack; none is committed with outputs.

Each notebook ends with cells that assert what it showed, so executing it is a
test. The kernel finds the test stack through ``LABKIT_*`` variables (it inherits
this process's environment), exactly as a user's kernel finds theirs.
"""

from __future__ import annotations

import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

from labkit import Stack
from labkit.settings import REPO_ROOT

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
    "09_delivery_guarantees.ipynb",
    "10_scaling_out.ipynb",
]
# Notebooks that start private stacks under the test stack's state folder (and stop them).
PRIVATE_STACKS = ["tiny-limits", "faults", "slow-watcher", "cluster"]
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


def _heading(cell: nbformat.NotebookNode) -> str | None:
    """The first line of a markdown cell that opens a section ("## Exercises"), else None."""
    match = re.match(r"#{1,3} +(.+)", cell.source) if cell.cell_type == "markdown" else None
    return match.group(1).strip() if match else None


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_solutions_never_run(name: str):
    """Exercises and their solutions are markdown: Run All cannot run a solution, so none changes the lesson's widgets.

    A solution is a folded ``<details>`` block right after its exercises; the Checks cell
    is the last code cell, so it sees every widget as the lesson left it.
    """
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    headings = [(index, _heading(cell)) for index, cell in enumerate(nb.cells) if _heading(cell)]
    exercises = [index for index, title in headings if title == "Exercises"]
    assert len(exercises) == 1, f"{name}: one '## Exercises' section, found {len(exercises)}"
    start = exercises[0]
    end = next((index for index, _ in headings if index > start), len(nb.cells))
    for index in range(start, end):
        assert nb.cells[index].cell_type == "markdown", f"{name} cell {index}: an exercise or solution runs in Run All"
    solution = nb.cells[start + 1]
    assert solution.source.startswith("<details>") and "Solutions" in solution.source, \
        f"{name}: the solutions are not folded after the exercises"
    for index, cell in enumerate(nb.cells):
        hidden = cell.metadata.get("jupyter", {}).get("source_hidden")
        runs_a_solution = cell.cell_type == "code" and (hidden or re.match(r"#+ *Solution", cell.source))
        assert not runs_a_solution, f"{name} cell {index}: a hidden solution that runs"
    code = [index for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    checks = [index for index, title in headings if title == "Checks"]
    assert checks and code[-1] == checks[-1] + 1, f"{name}: the Checks cell is not the last code cell"


# The lessons on failure, groups and the topic run on both brokers (`make test` runs them again on noida-db).
ON_BOTH_BROKERS = ("06", "07", "08")


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.both_brokers] if name.startswith(ON_BOTH_BROKERS) else [])
    for name in NOTEBOOKS
])
def test_notebook_runs_top_to_bottom(name: str, stack: Stack, monkeypatch: pytest.MonkeyPatch):
    for variable, value in stack.settings.as_env().items():
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
    # What a learner sees after Run All: no red box anywhere (stderr, a warning, an error).
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            red = output.output_type == "error" or (output.output_type == "stream" and output.name == "stderr")
            assert not red, \
                f"{name} cell {index} shows a red box after Run All: {output.get('text') or output.get('evalue')}"
    # The session stack serves the tests after this one: no notebook may leave it broken.
    assert stack.is_running(), f"{name} left the test stack with a component stopped: {stack.status()}"
    assert stack.health("consumer")["status"] == "ok" and stack.health("producer")["status"] == "ok"
