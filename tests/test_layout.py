"""The shape of the library, read from its source: no import cycle, and the library under the command line.

Static: every `import src...` and `from src... import ...` of every module (at the top or inside a
function) is an edge; nothing is imported, so the test costs milliseconds.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
LIBRARY = ("src.grpo", "src.models", "src.data", "src.eval", "src.rewards", "src.recipes")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the src modules it imports (a `from package import module` counts as the module)."""
    modules = {module_name(path): path for path in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name.startswith("src.")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src"):
                edges.add(node.module)
                edges |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules}
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for edge in graph[node]:
            if edge not in index:
                visit(edge)
                low[node] = min(low[node], low[edge])
            elif edge in stack:
                low[node] = min(low[node], index[edge])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    graph = import_graph()
    # packages import nothing of their own, so a package-to-module edge never hides a cycle
    assert not [name for name in graph if (SRC.parent / name.replace(".", "/") / "__init__.py").exists()
                and any(edge.startswith(name + ".") for edge in graph[name])]
    assert cycles(graph) == []


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_does_not_import_the_command_line():
    graph = import_graph()
    importers = {name for name, edges in graph.items() if name.startswith(LIBRARY)
                 and any(edge == "src.cli" or edge.startswith("src.cli.") for edge in edges)}
    assert importers == set()
