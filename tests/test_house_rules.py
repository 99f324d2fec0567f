"""The house rules, checked on the source tree by its syntax (``ast``), not by searching text.

- A name starting with one ``_`` belongs to the module that defines it: no module
  of ``labkit/`` or ``tests/`` imports one from another (``from x import _name``).
- The CLI asks no ``isinstance`` and no ``getattr``: what it needs is on the
  objects it calls (a Protocol that carries every method its callers use).
- Every HTML ``<table`` labkit shows is built in ``labkit/lab/tables.py``.
- Percentiles are computed in ``labkit/percentiles.py`` only.

Each check is a function from one module's source to what it finds there, fed
below a small source that breaks its rule, so that a check that finds nothing
cannot pass unnoticed.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

import labkit

PACKAGE = Path(labkit.__file__).parent
REPO = PACKAGE.parent
TESTS = REPO / "tests"
TABLES = PACKAGE / "lab" / "tables.py"
PERCENTILES = PACKAGE / "percentiles.py"

# What computes a percentile outside labkit.percentiles: numpy's functions, and the standard library's.
PERCENTILE_FUNCTIONS = {("np", "percentile"), ("np", "quantile"), ("np", "nanpercentile"), ("np", "nanquantile"),
                        ("numpy", "percentile"), ("numpy", "quantile"), ("numpy", "nanpercentile"),
                        ("numpy", "nanquantile"), ("statistics", "quantiles")}  # fmt: skip

Check = Callable[[ast.Module], Iterable[tuple[int, str]]]  # a module's syntax -> (line, what was found)


def private_imports(tree: ast.Module) -> Iterable[tuple[int, str]]:
    """``from module import _name``: a name private to another module (dunders such as __version__ are public)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield node.lineno, f"imports {alias.name} from {'.' * node.level}{node.module or ''}"


def type_questions(tree: ast.Module) -> Iterable[tuple[int, str]]:
    """Calls of isinstance and getattr."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "getattr"):
            yield node.lineno, f"calls {node.func.id}"


def html_tables(tree: ast.Module) -> Iterable[tuple[int, str]]:
    """String literals (f-strings' text parts too) holding an HTML ``<table``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "<table" in node.value.lower():
            yield node.lineno, f"writes an HTML table: {node.value.strip()[:60]!r}"


def percentile_computations(tree: ast.Module) -> Iterable[tuple[int, str]]:
    """``np.percentile(...)`` and the like, and those functions imported by name."""
    functions = {name for _, name in PERCENTILE_FUNCTIONS}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in PERCENTILE_FUNCTIONS:
                yield node.lineno, f"uses {node.value.id}.{node.attr}"
        elif isinstance(node, ast.ImportFrom) and node.module in ("numpy", "statistics"):
            for alias in node.names:
                if alias.name in functions:
                    yield node.lineno, f"imports {alias.name} from {node.module}"


def findings(check: Check, paths: Iterable[Path], exempt: Path | None = None) -> list[str]:
    """Every finding of ``check`` in ``paths``, as ``path:line: what``, for the failure message."""
    return [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in sorted(paths) if path != exempt
        for line, what in check(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    ]


def python_files(*roots: Path) -> list[Path]:
    return [path for root in roots for path in root.rglob("*.py") if ".venv" not in path.parts]


# --------------------------------------------------------------------------- the tree


def test_the_checks_see_the_whole_tree():
    # A walk that read nothing would let every check below pass.
    assert len(python_files(PACKAGE)) > 60 and len(python_files(TESTS)) > 40
    assert PACKAGE / "cli.py" in python_files(PACKAGE) and TABLES.exists() and PERCENTILES.exists()


def test_no_private_name_is_imported_across_modules():
    found = findings(private_imports, python_files(PACKAGE, TESTS))
    assert not found, "private names imported from another module:\n" + "\n".join(found)


def test_the_cli_asks_no_isinstance_or_getattr():
    found = findings(type_questions, [PACKAGE / "cli.py"])
    assert not found, "labkit/cli.py asks objects what they are:\n" + "\n".join(found)


def test_html_tables_are_built_in_tables_py_only():
    found = findings(html_tables, python_files(PACKAGE), exempt=TABLES)
    # chart.js is not Python: there, a plain text search.
    found += [f"{path.relative_to(REPO)}: writes an HTML table" for path in sorted(PACKAGE.rglob("*.js"))
              if "<table" in path.read_text(encoding="utf-8").lower()]
    assert not found, "HTML tables built outside labkit/lab/tables.py (use tables.html_table):\n" + "\n".join(found)


def test_percentiles_are_computed_in_percentiles_py_only():
    found = findings(percentile_computations, python_files(PACKAGE), exempt=PERCENTILES)
    assert not found, "percentiles computed outside labkit/percentiles.py:\n" + "\n".join(found)


# --------------------------------------------------------------------------- each check, fed its violation


@pytest.mark.parametrize(
    ("check", "source", "expected"),
    [
        (private_imports, "from labkit.client import _SeenDeliveries, Sender\n",
         [(1, "imports _SeenDeliveries from labkit.client")]),
        (private_imports, "def f():\n    from .model import _Route\n", [(2, "imports _Route from .model")]),
        (type_questions, "def run(args):\n    if isinstance(args.n, int):\n        return getattr(args, 'x')\n",
         [(2, "calls isinstance"), (3, "calls getattr")]),
        (html_tables, "def show(rows):\n    return f\"<TABLE class='x'>{rows}</table>\"\n",
         [(2, "writes an HTML table: \"<TABLE class='x'>\"")]),
        (percentile_computations, "import numpy as np\ncuts = np.percentile(data, [50, 99])\n",
         [(2, "uses np.percentile")]),
        (percentile_computations, "import statistics\nq = statistics.quantiles(data, n=100)\n",
         [(2, "uses statistics.quantiles")]),
        (percentile_computations, "from numpy import quantile\n", [(1, "imports quantile from numpy")]),
    ],
)
def test_each_check_reports_its_violation(check: Check, source: str, expected: list[tuple[int, str]]):
    assert sorted(check(ast.parse(source))) == expected


@pytest.mark.parametrize(
    ("check", "source"),
    [
        (private_imports, "from __future__ import annotations\nfrom labkit import __version__\nimport os._x\n"),
        (type_questions, "def run(args):\n    return args.n.bit_length()\n"),
        (html_tables, "text = 'a table of rows'\n"),
        (percentile_computations, "from labkit.percentiles import percentiles\ncuts = percentiles(data)\n"),
    ],
)
def test_each_check_leaves_what_keeps_the_rule(check: Check, source: str):
    assert list(check(ast.parse(source))) == []
