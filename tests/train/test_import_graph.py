"""Imports stay one-way: loading the config or the data tools does not pull in the metrics stack,
and the config modules form no cycle (an import anywhere in a module counts, deferred ones too)."""

from __future__ import annotations

import ast
import subprocess
import sys

from training_run import REPO

PACKAGE = REPO / "partialfc"
# The modules whose cycles issue #17 broke (config <-> train_state, config <-> resume, config -> metrics).
CONFIG_MODULES = {
    "partialfc.config",
    "partialfc.config_aliases",
    "partialfc.common.options",
    "partialfc.training.resume",
    "partialfc.training.train_state",
    "partialfc.core.margins",
    "partialfc.training.optimizer",
    "partialfc.metrics",
}


def import_graph() -> dict[str, set[str]]:
    """Module -> the partialfc modules it imports, at module level or inside a function."""
    names = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        graph[name] = {module for module in imported if module in names and module != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while not component or module not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(component)

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_config_module_is_on_an_import_cycle():
    graph = import_graph()
    assert set(graph) >= CONFIG_MODULES
    assert [cycle for cycle in cycles(graph) if cycle & CONFIG_MODULES] == []


def test_importing_the_data_tools_leaves_prometheus_client_out():
    code = (
        "import sys, partialfc.data, partialfc.config; "
        "print(sorted(name for name in sys.modules if name.startswith('prometheus_client')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"
