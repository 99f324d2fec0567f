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


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    return max((rank, len(prefix)) for prefix, rank in LAYERS if module == prefix or module.startswith(prefix + "."))[0]


def imports() -> dict[str, set[str]]:
    """Each labkit module and the labkit modules it imports (resolved to the module, not a name in it)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
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


def test_no_module_imports_a_higher_layer():
    wrong = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in imports().items() if module != FRONT_DOOR
        for target in targets if layer(target) > layer(module)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {module: targets - {FRONT_DOOR} for module, targets in imports().items() if module != FRONT_DOOR}
    # A package imports its own modules from its __init__: that is not a cycle back to it.
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    visiting, done, cycles = set(), set(), []

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(" -> ".join(path[path.index(module):] + [module]))
            return
        visiting.add(module)
        for target in sorted(graph.get(module, ())):
            visit(target, path + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, "\n".join(cycles)


def test_the_check_sees_a_wrong_import():
    # The rule itself: a core module importing the stack would be caught.
    assert layer("labkit.client") < layer("labkit.ops.stack") < layer("labkit.lab.widgets") < layer("labkit.cli")
    assert layer("labkit.services.consumer") < layer("labkit.ops.gateway.nginx")
