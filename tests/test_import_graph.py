"""The layering of ``ngp_cli``, read from its import statements (issue 15): every ``import`` and ``from … import`` in
a module counts, those inside functions included (a lazy import still couples two modules), except those under
``if TYPE_CHECKING:`` (annotations only).

Rules: no import cycles between modules; ``ngp_cli.cuda`` imports nothing from ``ngp_cli.tasks``; only the task
registry (``ngp_cli.tasks`` itself) imports the task packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ngp_cli

ROOT = Path(ngp_cli.__file__).parent
# Cycles that existed when this test was written; the list may only shrink (remove a pair once it is gone).
KNOWN_CYCLES: set[frozenset[str]] = set()
# Modules outside ngp_cli.tasks that may import task packages: the registry and, until the generic task pipeline
# exists, the modules listed here (the list may only shrink).
TASK_IMPORTERS = {"ngp_cli.tasks"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph() -> dict[str, set[str]]:
    """``{module: {ngp_cli modules it imports}}`` over every .py file of the package; ``from pkg import name`` counts
    as importing ``pkg.name`` when that is a module, else ``pkg``."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                     for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in type_only:  # `if TYPE_CHECKING:` imports are for annotations only
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:  # import a.b.c of a module a.b: the module a.b
                    name = name.rpartition(".")[0]
                if name.startswith("ngp_cli") and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # ngp_cli/cli.py imports its commands' modules inside the command functions only.
    assert "ngp_cli.commands" in graph["ngp_cli.cli"] or "ngp_cli.bench" in graph["ngp_cli.cli"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    new = cycles - KNOWN_CYCLES
    assert not new, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)


def test_cuda_imports_nothing_from_tasks():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if t.startswith("ngp_cli.tasks")) for m, ts in graph.items()
           if m.startswith("ngp_cli.cuda")}
    assert not {m: ts for m, ts in bad.items() if ts}


def test_only_the_registry_imports_task_packages():
    graph = import_graph()
    importers = {m for m, ts in graph.items() if not m.startswith("ngp_cli.tasks.")
                 and any(t.startswith("ngp_cli.tasks.") for t in ts)}
    assert importers <= TASK_IMPORTERS, sorted(importers - TASK_IMPORTERS)
