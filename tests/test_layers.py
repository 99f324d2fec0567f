"""labkit's layers, checked on its own imports: lower layers never import higher ones, and no module cycle.

From the bottom: the library core (settings, events, errors, the client, the Kafka
reader, discovery), then ``services/`` (what runs in the producer and consumer
processes), ``ops/`` (stack, compose, brokers, gateway), then ``lab/`` (notebook
widgets) and ``bench/``, and at the top the CLI and the package's front door.
Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import labkit

PACKAGE = Path(labkit.__file__).parent
LAYERS = [  # (prefix, layer); the longest prefix that matches wins
    ("labkit", 0),
    ("labkit.services", 1),
    ("labkit.ops", 2),
    ("labkit.lab", 3),
    ("labkit.bench", 3),
    ("labkit.cli", 4),
    ("labkit.__main__", 4),
]
FRONT_DOOR = "labkit"  # __init__.py re-exports from every layer


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    return max((rank, len(prefix)) for prefix, rank in LAYERS if module == prefix or module.startswith(prefix + "."))[0]


def imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of ``package`` and the modules of it that it imports (resolved to the module, not a name in it)."""
    modules = {module_name(path, package): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {target for target in targets if target in modules}
        graph[name] = found - {name}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer, in words."""
    return [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in sorted(graph.items()) if module != FRONT_DOOR
        for target in sorted(targets) if layer(target) > layer(module)
    ]


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle met in a depth-first walk, as ``a -> b -> a``."""
    graph = {module: targets - {FRONT_DOOR} for module, targets in graph.items() if module != FRONT_DOOR}
    # A package imports its own modules from its __init__: that is not a cycle back to it.
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    visiting, done, found = set(), set(), []

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            found.append(" -> ".join(path[path.index(module):] + [module]))
            return
        visiting.add(module)
        for target in sorted(graph.get(module, ())):
            visit(target, path + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_the_reader_sees_labkit_whole():
    # A reader that returned nothing would let every check below pass.
    graph = imports()
    assert len(graph) > 70 and sum(map(len, graph.values())) > 150, (len(graph), sum(map(len, graph.values())))
    assert "labkit.ops.stack" in graph["labkit.cli"] and "labkit.settings" in graph["labkit.services.producer"]


def test_no_module_imports_a_higher_layer():
    wrong = upward_imports(imports())
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    found = cycles(imports())
    assert not found, "\n".join(found)


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A throwaway ``labkit`` package under ``root``: relative path -> source."""
    for relative, source in files.items():
        path = root / "labkit" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "labkit"


def test_the_check_reports_a_wrong_import(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "",
        "settings.py": "",
        "services/__init__.py": "",
        "services/producer.py": "from labkit.settings import Settings\n",
        "services/consumer.py": "def main():\n    from labkit.ops.stack import Stack  # inside a function: counts "
                                "too\n",
        "ops/__init__.py": "",
        "ops/stack.py": "import labkit.services.producer\n",
    })
    assert upward_imports(imports(package)) == [
        "labkit.services.consumer (layer 1) imports labkit.ops.stack (layer 2)"]


def test_the_check_reports_a_cycle(tmp_path):
    package = write_package(tmp_path, {
        "__init__.py": "",
        "events.py": "from labkit.client import Sender\n",
        "client.py": "from labkit import events\n",
    })
    assert cycles(imports(package)) == ["labkit.client -> labkit.events -> labkit.client"]


def test_the_layers_are_ordered():
    # The rule itself: a core module importing the stack would be caught.
    assert layer("labkit.client") < layer("labkit.ops.stack") < layer("labkit.lab.widgets") < layer("labkit.cli")
    assert layer("labkit.services.consumer") < layer("labkit.ops.gateway.nginx")
