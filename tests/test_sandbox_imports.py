"""The modules of the ``sandboxes`` package import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import aligngym.sandboxes

PACKAGE = "aligngym.sandboxes"


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str], package: str) -> list[str]:
    """The package's modules that one import statement names ("__init__" for the package itself)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return [name.removeprefix(package + ".") for name in names if name.startswith(package + ".")]
    module = node.module or ""
    if node.level == 1:
        base = module
    elif node.level == 0 and (module == package or module.startswith(package + ".")):
        base = module.removeprefix(package).lstrip(".")
    else:
        return []  # outside the package
    if base:
        return [base.split(".")[0]]
    # ``from . import x``: a submodule x, or a name that the package's __init__ defines.
    return [alias.name if alias.name in modules else "__init__" for alias in node.names]


def import_graph(directory: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports.

    Every import statement counts, wherever it stands: at module level, inside a function (a deferred import
    still runs, and still ties the two modules together), and under ``if TYPE_CHECKING``.
    """
    modules = {path.stem for path in directory.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(directory.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        imports = (node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom))
        graph[path.stem] = {t for node in imports for t in _targets(node, modules, package) if t != path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(module)
        return None

    return next((cycle for module in sorted(graph) if (cycle := visit(module))), None)


def test_the_sandboxes_package_has_no_import_cycle():
    graph = import_graph(Path(aligngym.sandboxes.__file__).parent, PACKAGE)
    assert {"base", "cap", "pool", "factory", "local"} <= graph.keys()  # the right directory was read
    assert "cap" in graph["pool"] and "factory" in graph["pool"]  # and its imports were seen
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_deferred_relative_and_absolute_imports(tmp_path):
    """The check above can fail: it finds cycles closed by a function-level or an absolute import."""
    (tmp_path / "__init__.py").write_text("from .a import A\n")
    (tmp_path / "a.py").write_text("from .b import B\nA = 1\n")
    (tmp_path / "b.py").write_text("B = 2\n\ndef later():\n    from .c import C\n")
    (tmp_path / "c.py").write_text("import pkg.a\nC = 3\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"__init__": {"a"}, "a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    (tmp_path / "c.py").write_text("from pkg import A\n")  # the package itself: through __init__
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["__init__", "a", "b", "c", "__init__"]
    (tmp_path / "c.py").write_text("import os\nC = 3\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
