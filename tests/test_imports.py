"""The package's import graph, read from the source with ``ast`` (imports inside functions
count): no cycles, and the layering the layout promises. Also: CLIs answer ``--help`` without
importing torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, module: str, level: int, is_package: bool, modules: dict) -> str:
    if level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        name = ".".join(base + ([name] if name else []))
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its source."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[tuple[str, int]] = []
            if isinstance(node, ast.Import):
                targets = [(alias.name, 0) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix = f"{node.module}." if node.module else ""
                targets = [(node.module or "", node.level)]
                targets += [(prefix + alias.name, node.level) for alias in node.names]
            for name, level in targets:
                if not level and not name.startswith("pipeline"):
                    continue
                target = _resolve(name, module, level, is_package, modules)
                # A package's own __init__ is not an edge (importing a.b runs a first).
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "pipeline.engine.runners" in graph["pipeline.predict"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert find_cycles(import_graph()) == []


def _edges(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    def inside(name: str, package: str) -> bool:
        return name == package or name.startswith(package + ".")

    return sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if inside(m, source) and inside(t, target)
    )


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("pipeline.fit", "pipeline.engine"),  # stage two never touches images
        ("pipeline.fit", "pipeline.extract"),
        ("pipeline.engine", "pipeline.store"),  # the engine knows no store
        ("pipeline.engine", "pipeline.extract"),
        ("pipeline.engine", "pipeline.fit"),
        ("pipeline.extract", "pipeline.fit"),
        ("pipeline.exceptions", "pipeline"),
        ("pipeline._io", "pipeline"),
    ],
)
def test_layering(source, target):
    graph = import_graph()
    assert _edges(graph, source, target) == []


@pytest.mark.parametrize("module", ["pipeline.extract", "pipeline.fit", "pipeline.predict"])
def test_help_loads_no_torch(module):
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{module!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted({'torch', 'torchvision', 'sklearn', 'dask', 'onnxruntime'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_no_long_functions():
    """No function body (docstring aside) over 60 lines, unless a ``# long:`` comment right
    above it says why."""
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            first = node.body[0]
            doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            code = (
                node.end_lineno
                - node.lineno
                + 1
                - (first.end_lineno - first.lineno + 1 if doc else 0)
            )
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            if code > 60 and "# long:" not in lines[start - 2]:
                too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert too_long == []
