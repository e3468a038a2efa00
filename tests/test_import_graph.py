"""The engine's modules import one another without cycles.

Read from the source with ``ast``, not by importing: every ``import`` and
``from ... import`` of an ``engine`` module counts, wherever it stands (at the
top, inside a function, under ``if TYPE_CHECKING:``), since each is a
dependency a reader has to follow. ``from engine import _wire`` names the
module ``engine._wire``; importing the package ``engine`` itself (its
``__init__`` re-exports the public API from the modules) counts as an edge to
``engine``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def module_name(path: Path) -> str:
    """``engine/mock/_app.py`` -> ``engine.mock._app``; a package's ``__init__`` is the package."""
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_modules() -> dict[str, Path]:
    """Every module of the engine package, by dotted name."""
    return {module_name(path): path for path in sorted(ENGINE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The engine modules that the module ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = engine_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            if cycle is not None:
                return cycle
    return None


def test_engine_modules_import_each_other_without_cycles():
    """No engine module imports, directly or through others, a module that imports it."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_reports_a_cycle_it_is_given():
    """The check can fail: a three-module loop is found and named in order."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_imports_inside_functions_and_type_checking_blocks():
    """Imports under TYPE_CHECKING and inside functions count: _cli_run's lazy batch import."""
    graph = import_graph()
    assert "engine.app.batch" in graph["engine.app._cli_run"]
    assert "engine._wire" in graph["engine._http"]
